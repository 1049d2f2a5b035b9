"""The provider table: one OAuth 2.0 / OpenID Connect authorization server tokenfarm is a client of.

Endpoints come from the row (explicit URLs) or from the issuer's discovery document
(`app/providers/resolve.py`); credentials are never stored here, only the names of the secrets
that hold them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from app.db import timestamp_column, utcnow


class Provider(SQLModel, table=True):
    """An authorization server and how tokenfarm authenticates to it."""

    __tablename__ = "provider"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True, index=True)
    description: str = Field(default="", max_length=1000)
    # The well-known catalog entry this provider was made from (its quirks apply), or None.
    catalog: str | None = Field(default=None, max_length=64)
    issuer: str | None = Field(default=None, max_length=2000)
    authorization_url: str | None = Field(default=None, max_length=2000)
    token_url: str | None = Field(default=None, max_length=2000)
    revocation_url: str | None = Field(default=None, max_length=2000)
    device_authorization_url: str | None = Field(default=None, max_length=2000)
    jwks_uri: str | None = Field(default=None, max_length=2000)
    # basic | post | private_key_jwt | none
    client_auth: str = Field(default="basic", max_length=32)
    client_id_secret: str | None = Field(default=None, max_length=128)
    client_secret_secret: str | None = Field(default=None, max_length=128)
    private_key_secret: str | None = Field(default=None, max_length=128)
    scopes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    authorize_params: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )
    pkce: bool = Field(default=True)
    # Seconds a spent refresh token is still accepted (a reuse grace period): only then may a
    # refresh whose answer was lost be retried with the same refresh token.
    refresh_token_reuse_grace_seconds: int = Field(default=0)
    created_at: datetime = Field(default_factory=utcnow, sa_column=timestamp_column(False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=timestamp_column(False))
