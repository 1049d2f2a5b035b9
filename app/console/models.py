"""The console's table: server-side login sessions, revocable one by one or all at once."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, ForeignKey, Integer, Text
from sqlmodel import Field, SQLModel

from app.db import timestamp_column, utcnow


class ConsoleSession(SQLModel, table=True):
    """One logged-in browser. Only a hash of the cookie's session id is stored, so a copy of the
    database logs no one in."""

    __tablename__ = "console_session"

    id: int | None = Field(default=None, primary_key=True)
    id_hash: str = Field(max_length=64, unique=True, index=True)
    user_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("user_account.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    # The user's token generation at login: a password change or "log out everywhere" moves
    # the user's on, which ends this session as it ends login tokens.
    token_generation: int
    # A message for the next page this session shows (the outcome of a form post), then cleared.
    flash: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=timestamp_column(False))
    last_seen_at: datetime = Field(default_factory=utcnow, sa_column=timestamp_column(False))
