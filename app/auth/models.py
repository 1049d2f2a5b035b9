"""Tables of the identity domain: users, service accounts, API keys, roles and who holds them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column, ForeignKey, Integer, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from app.db import timestamp_column, utcnow


class User(SQLModel, table=True):
    """A person who logs in with an email and a password (stored only as an argon2 hash)."""

    __tablename__ = "user_account"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, unique=True, index=True)
    password_hash: str = Field(max_length=255)
    disabled: bool = Field(default=False)
    # Carried by every login token (`gen`); moving it on ends every token issued before.
    token_generation: int = Field(default=0)
    password_changed_at: datetime = Field(default_factory=utcnow, sa_column=timestamp_column(False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=timestamp_column(False))


class ServiceAccount(SQLModel, table=True):
    """A machine caller (a script, a CI job, another app) that authenticates with API keys."""

    __tablename__ = "service_account"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True, index=True)
    description: str = Field(default="", max_length=1000)
    created_at: datetime = Field(default_factory=utcnow, sa_column=timestamp_column(False))


class ApiKey(SQLModel, table=True):
    """An API key of a service account, stored only as a SHA-256 hash of its random part."""

    __tablename__ = "api_key"
    __table_args__ = (UniqueConstraint("service_account_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    service_account_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("service_account.id", ondelete="CASCADE"), nullable=False
        )
    )
    name: str = Field(max_length=64)
    key_id: str = Field(max_length=32, unique=True, index=True)
    key_hash: str = Field(max_length=64)
    expires_at: datetime | None = Field(default=None, sa_column=timestamp_column())
    last_used_at: datetime | None = Field(default=None, sa_column=timestamp_column())
    created_at: datetime = Field(default_factory=utcnow, sa_column=timestamp_column(False))


class Role(SQLModel, table=True):
    """A named set of permissions; `builtin` roles can't be deleted."""

    __tablename__ = "role"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True, index=True)
    description: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    permissions: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    builtin: bool = Field(default=False)
    created_at: datetime = Field(default_factory=utcnow, sa_column=timestamp_column(False))


class UserRole(SQLModel, table=True):
    """A role held by a user."""

    __tablename__ = "user_role"

    user_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("user_account.id", ondelete="CASCADE"), primary_key=True
        )
    )
    role_id: int = Field(
        sa_column=Column(Integer, ForeignKey("role.id", ondelete="CASCADE"), primary_key=True)
    )


class ServiceAccountRole(SQLModel, table=True):
    """A role held by a service account."""

    __tablename__ = "service_account_role"

    service_account_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("service_account.id", ondelete="CASCADE"), primary_key=True
        )
    )
    role_id: int = Field(
        sa_column=Column(Integer, ForeignKey("role.id", ondelete="CASCADE"), primary_key=True)
    )
