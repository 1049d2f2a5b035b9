"""Request and response models of the secrets API; only `SecretValueRead` ever carries a value."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from app.config import Environment
from app.pipeline.schemas import SECRET_NAME_PATTERN

REFRESH_ENDPOINT_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}/[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
SecretJSON = str | int | float | bool | dict[str, Any] | list[Any]


class StrictModel(BaseModel):
    """Unknown fields are refused, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid")


class SecretCreate(StrictModel):
    """A new secret; it may carry its first value."""

    name: str = Field(pattern=SECRET_NAME_PATTERN, examples=["ACCESS_TOKEN"])
    description: str = Field("", max_length=1000)
    environment_specific: bool = Field(True, description="One value per environment (runs may write it).")
    locked: bool = Field(False, description="A locked secret is never written by a run.")
    refresh_endpoint: str | None = Field(
        None, pattern=REFRESH_ENDPOINT_PATTERN, examples=["oauth/refresh-token"],
        description="`SLUG/READABLE_ID` of the endpoint that `GET /refresh/{name}` runs.",
    )
    value: SecretJSON | None = Field(None, description="The first value (never shown again here).")
    environment: Environment | None = Field(None, description="Where the first value goes.")
    expires_at: AwareDatetime | None = None

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "ACCESS_TOKEN", "description": "GitHub token"}]},
    )


class SecretUpdate(StrictModel):
    """Metadata changes; absent fields stay as they are."""

    description: str | None = Field(None, max_length=1000)
    environment_specific: bool | None = None
    locked: bool | None = None
    refresh_endpoint: str | None = Field(None, pattern=REFRESH_ENDPOINT_PATTERN)


class SecretRead(BaseModel):
    """A secret's metadata, for the current environment; never a value."""

    name: str
    description: str
    environment_specific: bool
    locked: bool
    refresh_endpoint: str | None
    status: str
    last_error: str | None
    last_refreshed_at: datetime | None
    environment: str = Field(description="The environment the version and expiry below are for.")
    has_value: bool
    version: int | None
    expires_at: datetime | None
    environments: list[str] = Field(description="Environments that hold a value.")
    created_at: datetime
    updated_at: datetime


class SecretValueWrite(StrictModel):
    """A value set by hand."""

    value: SecretJSON = Field(examples=["ghp_example"])
    environment: Environment | None = Field(
        None, description="Default: the service's environment (only for environment-specific secrets)."
    )
    expires_at: AwareDatetime | None = None


class SecretValueRead(BaseModel):
    """The one response that carries a secret value."""

    name: str
    value: Any
    version: int
    expires_at: datetime | None
    environment: str


class SecretVersionRead(BaseModel):
    """One entry of a secret's history (no value)."""

    version: int
    environment: str
    created_at: datetime
    expires_at: datetime | None
    source: str
    run_id: str | None
    actor: str | None
    current: bool


class RollbackRequest(StrictModel):
    """Which earlier version to make current again (as a new version)."""

    version: int = Field(ge=1)
    environment: Environment | None = None


class ValueWritten(BaseModel):
    """The outcome of a write: the new version, never the value."""

    name: str
    version: int
    environment: str
    expires_at: datetime | None
