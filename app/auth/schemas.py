"""Request and response models of the identity API; key material appears only in `ApiKeyCreated`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field

from app.schemas import StrictModel, UtcDatetime
from app.text import Description

ACCOUNT_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
AccountName = Annotated[str, Field(pattern=ACCOUNT_NAME_PATTERN, examples=["ci-deployer"])]
RoleName = Annotated[str, Field(pattern=ACCOUNT_NAME_PATTERN, examples=["oauth-refresher"])]


class LoginToken(BaseModel):
    """The answer of `POST /auth/token`."""

    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth token type, not a secret
    expires_in: int


class RoleCreate(StrictModel):
    """A new role."""

    name: RoleName
    description: Description = ""
    permissions: list[Annotated[str, Field(max_length=200)]] = Field(
        default_factory=list,
        examples=[["services.run:oauth", "secrets.update_from_service:ACCESS_TOKEN"]],
    )


class RoleUpdate(StrictModel):
    """Changes to a role; absent fields stay as they are."""

    description: Description | None = None
    permissions: list[Annotated[str, Field(max_length=200)]] | None = None


class RoleRead(BaseModel):
    """A role."""

    name: str
    description: str
    permissions: list[str]
    builtin: bool


class UserCreate(StrictModel):
    """A new user."""

    email: str = Field(max_length=320, examples=["alice@example.com"])
    password: str = Field(min_length=12, max_length=1024)
    roles: list[RoleName] = Field(default_factory=list)


class UserUpdate(StrictModel):
    """Changes to a user; a new password ends every token issued before it."""

    password: str | None = Field(None, min_length=12, max_length=1024)
    disabled: bool | None = None
    roles: list[RoleName] | None = None


class UserRead(BaseModel):
    """A user (never the password hash)."""

    email: str
    disabled: bool
    roles: list[str]
    created_at: datetime
    password_changed_at: datetime


class ServiceAccountCreate(StrictModel):
    """A new service account."""

    name: AccountName
    description: Description = ""
    roles: list[RoleName] = Field(default_factory=list)


class ServiceAccountUpdate(StrictModel):
    """Changes to a service account."""

    description: Description | None = None
    roles: list[RoleName] | None = None


class ServiceAccountRead(BaseModel):
    """A service account."""

    name: str
    description: str
    roles: list[str]
    created_at: datetime


class ApiKeyCreate(StrictModel):
    """A new API key of a service account."""

    name: AccountName = Field(examples=["ci"])
    expires_at: UtcDatetime | None = None


class ApiKeyRead(BaseModel):
    """An API key without its material."""

    name: str
    key_id: str
    expires_at: datetime | None
    last_used_at: datetime | None
    created_at: datetime


class ApiKeyCreated(BaseModel):
    """A new key: `key` is shown this once and never again."""

    name: str
    key: str
    expires_at: datetime | None
