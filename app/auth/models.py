"""Tables of the identity domain."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from app.db import timestamp_column, utcnow


class User(SQLModel, table=True):
    """A person who logs in with an email and a password (stored only as an argon2 hash)."""

    __tablename__ = "user_account"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, unique=True, index=True)
    password_hash: str = Field(max_length=255)
    is_owner: bool = Field(default=False)
    disabled: bool = Field(default=False)
    password_changed_at: datetime = Field(default_factory=utcnow, sa_column=timestamp_column(False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=timestamp_column(False))
