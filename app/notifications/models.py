"""Tables of the notifications domain."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Text
from sqlmodel import Field, SQLModel

from app.db import timestamp_column, utcnow


class Webhook(SQLModel, table=True):
    """Where to POST signed notifications about secrets' health.

    `secret_name` None: every secret's events; else only that secret's. `events` is a
    comma-separated subset of the event types. The signing secrets are stored encrypted (Fernet,
    like secret values) in one column, newest first, space-separated: the current one, and after
    a rotation with a grace period the one it replaced, valid until `previous_secret_expires_at`.
    Each is shown only when it is made.
    """

    __tablename__ = "webhook"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True, index=True)
    description: str = Field(default="", max_length=1000)
    url: str = Field(sa_column=Column(Text, nullable=False))
    signing_secret_ciphertext: str = Field(sa_column=Column(Text, nullable=False))
    previous_secret_expires_at: datetime | None = Field(default=None, sa_column=timestamp_column())
    secret_name: str | None = Field(default=None, max_length=128)
    events: str = Field(max_length=200)
    enabled: bool = Field(default=True)
    last_delivery_at: datetime | None = Field(default=None, sa_column=timestamp_column())
    last_delivery_status: str | None = Field(default=None, max_length=16)
    last_delivery_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_by: str = Field(max_length=255)
    created_at: datetime = Field(default_factory=utcnow, sa_column=timestamp_column(False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=timestamp_column(False))
