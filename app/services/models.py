"""Tables of the services domain: a service and its endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, ForeignKey, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel

from app.db import timestamp_column, utcnow


class Service(SQLModel, table=True):
    """A named group of endpoints with service variables."""

    __tablename__ = "service"

    id: int | None = Field(default=None, primary_key=True)
    slug: str = Field(max_length=64, unique=True, index=True)
    name: str = Field(max_length=200)
    description: str = Field(default="", max_length=1000)
    variables: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    created_at: datetime = Field(default_factory=utcnow, sa_column=timestamp_column(False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=timestamp_column(False))


class Endpoint(SQLModel, table=True):
    """One runnable endpoint of a service: its methods and its action (a list of nodes)."""

    __tablename__ = "endpoint"
    __table_args__ = (UniqueConstraint("service_id", "readable_id"),)

    id: int | None = Field(default=None, primary_key=True)
    service_id: int = Field(
        sa_column=Column(Integer, ForeignKey("service.id", ondelete="CASCADE"), nullable=False)
    )
    readable_id: str = Field(max_length=64)
    name: str = Field(max_length=200)
    description: str = Field(default="", max_length=1000)
    methods: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    enable_log: bool = Field(default=False)
    action: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
