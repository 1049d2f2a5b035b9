"""Tables of the schedules domain."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Text
from sqlmodel import Field, SQLModel

from app.db import timestamp_column, utcnow


class Schedule(SQLModel, table=True):
    """Runs an endpoint on a cron schedule as a service account.

    `next_run_at` is the next tick; the claim columns belong to the scheduler replica running
    the current tick (a claim that outlives `claim_expires_at` is taken over by another one).
    """

    __tablename__ = "schedule"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True, index=True)
    description: str = Field(default="", max_length=1000)
    service_slug: str = Field(max_length=64)
    endpoint_readable_id: str = Field(max_length=64)
    cron: str = Field(max_length=200)
    timezone: str = Field(max_length=64)
    run_as: str = Field(max_length=64)
    enabled: bool = Field(default=True)
    # ",production,staging," (None: every environment), so a replica filters with LIKE.
    environments: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    next_run_at: datetime | None = Field(default=None, sa_column=timestamp_column(index=True))
    last_run_at: datetime | None = Field(default=None, sa_column=timestamp_column())
    last_status: str | None = Field(default=None, max_length=16)
    last_run_id: str | None = Field(default=None, max_length=36)
    claimed_by: str | None = Field(default=None, max_length=64)
    claim_expires_at: datetime | None = Field(default=None, sa_column=timestamp_column())
    claimed_run_id: str | None = Field(default=None, max_length=36)
    claimed_tick_at: datetime | None = Field(default=None, sa_column=timestamp_column())
    run_started_at: datetime | None = Field(default=None, sa_column=timestamp_column())
    created_by: str = Field(max_length=255)
    created_at: datetime = Field(default_factory=utcnow, sa_column=timestamp_column(False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=timestamp_column(False))
