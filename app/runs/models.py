"""Tables of the runs domain: the run log and the secrets each run targeted."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, ForeignKey, String, Text
from sqlmodel import Field, SQLModel

from app.db import timestamp_column, utcnow


class Run(SQLModel, table=True):
    """One recorded execution of an endpoint, with a redacted per-node trace."""

    __tablename__ = "run"

    id: str = Field(primary_key=True, max_length=36)
    service_slug: str = Field(max_length=64, index=True)
    endpoint_readable_id: str = Field(max_length=64)
    trigger: str = Field(max_length=16)
    schedule_name: str | None = Field(default=None, max_length=64, index=True)
    actor: str = Field(max_length=255)
    status: str = Field(max_length=16, index=True)
    http_status: int
    error_type: str | None = Field(default=None, max_length=64)
    error_class: str | None = Field(default=None, max_length=16)
    error_message: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    started_at: datetime = Field(default_factory=utcnow, sa_column=timestamp_column(False))
    finished_at: datetime | None = Field(default=None, sa_column=timestamp_column())
    duration_ms: float = 0.0
    trace: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    # The writes of a run whose upstream answered, encrypted, kept until they are stored: if
    # storing fails or the process dies first, `tokenfarm runs recover` writes them from here.
    recovery: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class RunSecret(SQLModel, table=True):
    """A secret that a run targeted with `update_secret` (for filtering the run log by secret)."""

    __tablename__ = "run_secret"

    run_id: str = Field(
        sa_column=Column(
            String(36), ForeignKey("run.id", ondelete="CASCADE"), primary_key=True, nullable=False
        )
    )
    secret_name: str = Field(primary_key=True, max_length=128)
    written: bool = False
