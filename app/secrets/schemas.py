"""Request and response models of the secrets API; only `SecretValueRead` ever carries a value."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema

from app.auth.schemas import ACCOUNT_NAME_PATTERN
from app.config import Environment, get_settings
from app.pipeline.schemas import SECRET_NAME_PATTERN
from app.pipeline.wire import parse_origin
from app.schemas import StrictModel, UtcDatetime, all_finite, left_out
from app.text import Description

REFRESH_ENDPOINT_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}/[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
MAX_REFRESH_BEFORE_EXPIRY_SECONDS = 30 * 24 * 3600
MAX_MIN_VALID_SECONDS = 24 * 3600
SecretJSON = str | int | float | bool | dict[str, Any] | list[Any]
MAX_VERSION = 2**31 - 1  # versions are INTEGER columns; a larger number could never exist


def _must_match(pattern: str, rule: str) -> BeforeValidator:
    """Check `pattern` first, so a mismatch reads as `rule` rather than as the raw regex."""

    def check(value: Any) -> Any:
        if isinstance(value, str) and not re.fullmatch(pattern, value):
            raise ValueError(rule)
        return value

    return BeforeValidator(check)


SecretName = Annotated[
    str,
    Field(pattern=SECRET_NAME_PATTERN, examples=["ACCESS_TOKEN"]),
    _must_match(
        SECRET_NAME_PATTERN,
        "a secret name starts with a letter and has at most 128 letters, digits, '_' or '-' "
        "(e.g. ACCESS_TOKEN)",
    ),
]
RefreshEndpoint = Annotated[
    str,
    Field(
        pattern=REFRESH_ENDPOINT_PATTERN,
        examples=["oauth/refresh-token"],
        description="`SLUG/READABLE_ID` of the endpoint that `GET /refresh/{name}` runs.",
    ),
    _must_match(
        REFRESH_ENDPOINT_PATTERN,
        "must be 'SLUG/READABLE_ID' of an endpoint (e.g. 'oauth/refresh-token')",
    ),
]
RefreshAs = Annotated[
    str,
    Field(pattern=ACCOUNT_NAME_PATTERN, examples=["oauth-refresher"]),
    _must_match(ACCOUNT_NAME_PATTERN, "must be a service account name (e.g. oauth-refresher)"),
]
RefreshBeforeExpirySeconds = Annotated[
    int,
    Field(ge=1, le=MAX_REFRESH_BEFORE_EXPIRY_SECONDS, examples=[300]),
]


def _origin(value: Any) -> Any:
    """An origin (`scheme://host[:port]`), normalized; anything else is refused saying why."""
    if not isinstance(value, str):
        return value  # the type check says what is wrong
    return parse_origin(value)


MAX_ALLOWED_DESTINATIONS = 50
Origin = Annotated[
    str, Field(max_length=300, examples=["https://github.com"]), AfterValidator(_origin)
]
AllowedDestinations = Annotated[
    list[Origin],
    Field(
        max_length=MAX_ALLOWED_DESTINATIONS,
        description="Origins (`https://host[:port]`) a run may send this secret's value, or "
        "anything made from it, to; a request elsewhere that carries it fails before it is "
        "sent. null: anywhere (a warning says so when the secret is saved).",
        examples=[["https://github.com"]],
    ),
    AfterValidator(lambda origins: list(dict.fromkeys(origins))),
]


def _storable(value: Any) -> Any:
    """Refuse what would read back as null (null itself, NaN and Infinity anywhere inside) and
    what is larger than `TOKENFARM_MAX_SECRET_VALUE_BYTES` as JSON text."""
    if value is None:
        raise ValueError("a secret value can't be null (any other JSON value is fine)")
    if not all_finite(value):
        raise ValueError("a secret value can't hold NaN or Infinity (JSON has no such numbers)")
    problem = value_size_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def value_size_problem(value: Any) -> str | None:
    """Why a value a person sets is too large (`TOKENFARM_MAX_SECRET_VALUE_BYTES` of JSON
    text), or None; config as code asks this too, before it writes anything."""
    # The process's settings: a request model has no app to ask (`create_app` uses the same).
    limit = get_settings().max_secret_value_bytes
    # A cheap bound first: a string's JSON text is at least as long as the string.
    too_large = isinstance(value, str) and len(value) > limit
    if not too_large:
        text = json.dumps(value, ensure_ascii=False)
        too_large = len(text.encode("utf-8", errors="surrogatepass")) > limit
    if too_large:
        return f"a secret value is at most {limit} bytes as JSON (TOKENFARM_MAX_SECRET_VALUE_BYTES)"
    return None


PROVIDER_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
ProviderName = Annotated[
    str,
    Field(pattern=PROVIDER_NAME_PATTERN, examples=["github"]),
    _must_match(PROVIDER_NAME_PATTERN, "must be a provider name (e.g. github)"),
]
SCOPE_PATTERN = r"^[\x21\x23-\x5b\x5d-\x7e]{1,200}$"  # RFC 6749 §3.3 scope-token
Scopes = Annotated[
    list[Annotated[str, Field(pattern=SCOPE_PATTERN, examples=["read:user"])]],
    Field(max_length=100, examples=[["openid", "email"]]),
    AfterValidator(lambda scopes: list(dict.fromkeys(scopes))),
]


class SecretCreate(StrictModel):
    """A new secret; it may carry its first value."""

    name: SecretName
    description: Description = ""
    environment_specific: bool = Field(
        True, description="One value per environment (runs may write it)."
    )
    locked: bool = Field(False, description="A locked secret is never written by a run.")
    refresh_endpoint: RefreshEndpoint | None = None
    refresh_as: RefreshAs | None = Field(
        None, description="Service account that expiry-driven refreshes run as (`act_as:ACCOUNT`)."
    )
    refresh_before_expiry_seconds: RefreshBeforeExpirySeconds | None = Field(
        None, description="Refresh this long before expiry; null: 10 % of the lifetime, >= 30 s."
    )
    allowed_destinations: AllowedDestinations | None = None
    value: SecretJSON | SkipJsonSchema[None] = Field(
        None, description="The first value (never shown again here)."
    )
    environment: Environment | None = Field(None, description="Where the first value goes.")
    expires_at: UtcDatetime | None = None
    provider: ProviderName | None = Field(
        None,
        description="Make a connected secret: its value is an access token from this provider "
        "(GET /v1/providers), obtained by connecting (POST /v1/secrets/{name}/connect-links) and "
        "refreshed on its own; no `value` then.",
    )
    scopes: Scopes | None = Field(
        None, description="Scopes to ask for when connecting (default: the provider's)."
    )

    # An explicit null is refused; leaving `value` out creates a secret without one.
    _value_storable = field_validator("value", mode="before")(_storable)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "ACCESS_TOKEN", "description": "GitHub token"}]},
    )


class SecretUpdate(StrictModel):
    """Metadata changes; absent fields stay as they are."""

    description: Description | None = left_out()
    environment_specific: bool | None = left_out()
    locked: bool | None = left_out()
    refresh_endpoint: RefreshEndpoint | None = Field(None, description="null unbinds it.")
    refresh_as: RefreshAs | None = Field(
        None,
        description="Service account that expiry-driven refreshes run as (needs "
        "`act_as:ACCOUNT`); null: none, the secret is refreshed only on demand.",
    )
    refresh_before_expiry_seconds: RefreshBeforeExpirySeconds | None = Field(
        None, description="Refresh this long before expiry; null: 10 % of the lifetime, >= 30 s."
    )
    allowed_destinations: AllowedDestinations | None = None


class SecretRead(BaseModel):
    """A secret's metadata, for the current environment; never a value."""

    name: str
    description: str
    environment_specific: bool
    locked: bool
    refresh_endpoint: str | None
    refresh_as: str | None = Field(
        description="Service account that expiry-driven refreshes run as (null: none)."
    )
    refresh_before_expiry_seconds: int | None = Field(
        description="How long before expiry the scheduler refreshes (null: 10 % of the "
        "lifetime, at least 30 s)."
    )
    allowed_destinations: list[str] | None = Field(
        description="Origins a run may send the value to (null: anywhere)."
    )
    status: Literal["ok", "failing", "needs_reauth"] = Field(
        description="`failing`: the last refreshes failed (see `failure_count`, `last_error`); "
        "`needs_reauth`: the token endpoint refused the grant (invalid_grant), so refreshes stop "
        "until a value is set by hand."
    )
    failure_count: int = Field(description="Failed refreshes in a row; a success resets it.")
    last_error: str | None
    last_refreshed_at: datetime | None
    environment: str = Field(description="The environment the version and expiry below are for.")
    has_value: bool
    version: int | None
    expires_at: datetime | None
    next_refresh_at: datetime | None = Field(
        description="When the scheduler refreshes this environment's value (null: never on its "
        "own: no refresh_as, refresh_endpoint or expiry, or `needs_reauth`)."
    )
    environments: list[str] = Field(description="Environments that hold a value.")
    created_at: datetime
    updated_at: datetime
    provider: str | None = Field(
        None, description="A connected secret's provider (null: an ordinary secret)."
    )
    scopes: list[str] | None = Field(
        None, description="A connected secret's scopes: asked for, or granted at the last connect."
    )
    connected_by: str | None = Field(
        None, description="Who consented at the last connect (null: not connected)."
    )
    reconnect: str | None = Field(
        None,
        description="For a connected secret that needs a person again (`needs_reauth`, or no "
        "token): the route that makes a connect link.",
    )


class SecretSaved(SecretRead):
    """A secret's metadata as a create or change left it, with what deserves a second look."""

    warnings: list[str] = Field(
        default_factory=list,
        description="E.g. that the secret declares no allowed_destinations, so runs may send "
        "its value anywhere.",
    )


class SecretValueWrite(StrictModel):
    """A value set by hand."""

    value: Annotated[SecretJSON, BeforeValidator(_storable)] = Field(examples=["ghp_example"])
    environment: Environment | None = Field(
        None,
        description="Default: the service's environment (only for environment-specific secrets).",
    )
    expires_at: UtcDatetime | None = None


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

    version: int = Field(ge=1, le=MAX_VERSION)
    environment: Environment | None = None


class ValueWritten(BaseModel):
    """The outcome of a write: the new version, never the value."""

    name: str
    version: int
    environment: str
    expires_at: datetime | None
