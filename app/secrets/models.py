"""Tables of the secrets domain: the secret, its current values, and their history."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column, ForeignKey, Integer, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from app.db import timestamp_column, utcnow

ALL_ENVIRONMENTS = "*"
"""The `environment` of the value of a secret that is not environment-specific."""


class Secret(SQLModel, table=True):
    """A named secret and its metadata; its values live in `secret_value`."""

    __tablename__ = "secret"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=128, unique=True, index=True)
    description: str = Field(default="", max_length=1000)
    environment_specific: bool = Field(default=True)
    locked: bool = Field(default=False)
    refresh_endpoint: str | None = Field(default=None, max_length=300)
    status: str = Field(default="ok", max_length=32)
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    failure_count: int = Field(
        default=0, description="Failed refreshes in a row; a success resets it."
    )
    # Expiry-driven refresh: runs as this service account, this long before the value expires
    # (None: 10 % of the value's lifetime, at least 30 s).
    refresh_as: str | None = Field(default=None, max_length=64)
    refresh_before_expiry_seconds: int | None = Field(default=None)
    # Origins a run may send the value to (None: anywhere); see app/pipeline/wire.py.
    allowed_destinations: list[str] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True)
    )
    last_refreshed_at: datetime | None = Field(default=None, sa_column=timestamp_column())
    # A connected secret (app/connect): its value is an access token from this provider, with
    # these scopes (None: the provider's defaults; after a connect, what was granted).
    provider: str | None = Field(default=None, max_length=64)
    scopes: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    # Who consented last (the verified ID token's email or sub, else who started the flow).
    connected_by: str | None = Field(default=None, max_length=320)
    # A hidden companion (the refresh token of the connected secret with this id): no route
    # reads, lists, sets or exports it (app/secrets/rules.py:companion_problem).
    companion_of: int | None = Field(
        default=None,
        sa_column=Column(Integer, ForeignKey("secret.id", ondelete="CASCADE"), nullable=True),
    )
    created_at: datetime = Field(default_factory=utcnow, sa_column=timestamp_column(False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=timestamp_column(False))


class SecretValue(SQLModel, table=True):
    """The current value of a secret in one environment (`*` for all), with its version."""

    __tablename__ = "secret_value"
    __table_args__ = (UniqueConstraint("secret_id", "environment"),)

    id: int | None = Field(default=None, primary_key=True)
    secret_id: int = Field(
        sa_column=Column(Integer, ForeignKey("secret.id", ondelete="CASCADE"), nullable=False)
    )
    environment: str = Field(max_length=32)
    version: int
    ciphertext: str = Field(sa_column=Column(Text, nullable=False))
    expires_at: datetime | None = Field(default=None, sa_column=timestamp_column())
    updated_at: datetime = Field(default_factory=utcnow, sa_column=timestamp_column(False))
    # When the scheduler refreshes this value (None: never on its own), and its claim on it.
    next_refresh_at: datetime | None = Field(default=None, sa_column=timestamp_column(index=True))
    claimed_by: str | None = Field(default=None, max_length=64)
    claim_expires_at: datetime | None = Field(default=None, sa_column=timestamp_column())


class SecretVersion(SQLModel, table=True):
    """One write of a secret value, kept for history and rollback."""

    __tablename__ = "secret_version"
    __table_args__ = (UniqueConstraint("secret_id", "environment", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    secret_id: int = Field(
        sa_column=Column(Integer, ForeignKey("secret.id", ondelete="CASCADE"), nullable=False)
    )
    environment: str = Field(max_length=32)
    version: int
    ciphertext: str = Field(sa_column=Column(Text, nullable=False))
    expires_at: datetime | None = Field(default=None, sa_column=timestamp_column())
    source: str = Field(max_length=32)
    run_id: str | None = Field(default=None, max_length=36)
    actor: str | None = Field(default=None, max_length=255)
    created_at: datetime = Field(default_factory=utcnow, sa_column=timestamp_column(False))
