"""Tables of the connect flow: pending authorization requests (`state`) and connect links.

Both hold only hashes of what travels in URLs (the `state`, a link's token), so a database
read gives nobody a usable value; the PKCE verifier and the OIDC nonce are encrypted.
A `subject` column is ready for per-subject secrets (a later issue); it is always NULL now.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column, ForeignKey, Integer, Text
from sqlmodel import Field, SQLModel

from app.db import timestamp_column, utcnow


class ConnectState(SQLModel, table=True):
    """One authorization request sent to a provider, waiting for its callback (single use)."""

    __tablename__ = "connect_state"

    id: int | None = Field(default=None, primary_key=True)
    state_hash: str = Field(max_length=64, unique=True, index=True)
    secret_id: int = Field(
        sa_column=Column(Integer, ForeignKey("secret.id", ondelete="CASCADE"), nullable=False)
    )
    subject: str | None = Field(default=None, max_length=200)
    initiator: str = Field(max_length=255)
    # SHA-256 of the cookie that binds the flow to the browser that started it.
    browser_hash: str = Field(max_length=64)
    # Encrypted (app/crypto.py): the PKCE verifier (None: the provider has pkce off), the nonce.
    verifier: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    nonce: str = Field(sa_column=Column(Text, nullable=False))
    scopes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    return_to: str | None = Field(default=None, max_length=2000)
    created_at: datetime = Field(default_factory=utcnow, sa_column=timestamp_column(False))
    expires_at: datetime = Field(sa_column=timestamp_column(False))
    used_at: datetime | None = Field(default=None, sa_column=timestamp_column())


class ConnectLink(SQLModel, table=True):
    """A single-use link that starts a connect flow for whoever opens it."""

    __tablename__ = "connect_link"

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=64, unique=True, index=True)
    secret_id: int = Field(
        sa_column=Column(Integer, ForeignKey("secret.id", ondelete="CASCADE"), nullable=False)
    )
    subject: str | None = Field(default=None, max_length=200)
    initiator: str = Field(max_length=255)
    return_to: str | None = Field(default=None, max_length=2000)
    created_at: datetime = Field(default_factory=utcnow, sa_column=timestamp_column(False))
    expires_at: datetime = Field(sa_column=timestamp_column(False))
    used_at: datetime | None = Field(default=None, sa_column=timestamp_column())
