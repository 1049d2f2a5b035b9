"""The configuration document (`version: 1`): pydantic models of everything `apply` declares.

The shapes follow the API (a service is exactly the body of `POST /v1/services`), with two
differences for secrets: a value comes only through `value_from` (an environment variable or a
file, never inline), and a secret may name a preset `refresher` instead of a `refresh_endpoint`.
A section that is absent is not managed at all; `[]` declares that there is none (and with
`--prune` deletes what exists).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from app.auth.permissions import Permission
from app.auth.permissions import problem as permission_problem
from app.auth.schemas import ACCOUNT_NAME_PATTERN, AccountName, RoleName
from app.errors import InvalidInput
from app.presets.schemas import PresetName
from app.providers.schemas import ProviderCreate
from app.schedules.cron import check_cron, zone
from app.schedules.schemas import Cron, Environments, ScheduleName, TimeZone
from app.schemas import StrictModel as Strict
from app.secrets.schemas import (
    AllowedDestinations,
    RefreshAs,
    RefreshBeforeExpirySeconds,
    RefreshEndpoint,
    SecretName,
)
from app.services.schemas import READABLE_ID_PATTERN, SLUG_PATTERN, ServiceCreate
from app.text import Description

DOCUMENT_VERSION = 1
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,254}$"
BUILTIN_ROLES = ("owner", "anonymous")
INLINE_VALUE = (
    "an inline value is refused (it would sit in the file and in version control): use "
    "value_from: {env: NAME} or value_from: {file: PATH}"
)


def _permission(permission: str) -> str:
    """A permission that follows the grammar (checked here, so the error has its line)."""
    wrong = permission_problem(permission)
    if wrong is not None:
        raise ValueError(wrong)
    return permission


def _cron(expression: str) -> str:
    """A valid five-field cron expression, with single spaces (as the store keeps it)."""
    try:
        check_cron(expression)
    except InvalidInput as exc:
        raise ValueError(exc.message.removeprefix("cron: ")) from None
    return " ".join(expression.split())


def _timezone(name: str) -> str:
    """An IANA time zone."""
    try:
        zone(name)
    except InvalidInput as exc:
        raise ValueError(exc.message.removeprefix("timezone: ")) from None
    return name


RolePermission = Annotated[str, Field(max_length=200), AfterValidator(_permission)]


class ValueFrom(Strict):
    """Where a secret's value comes from: an environment variable or a file, exactly one."""

    env: str | None = Field(
        None,
        pattern=ENV_NAME_PATTERN,
        description="An environment variable of the process that applies the document (on the "
        "API: a key of the request's `env`).",
    )
    file: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="A file, relative to the document's directory (command line only).",
    )
    format: Literal["text", "json"] = Field(
        "text", description="`json`: the text is parsed, so the value is an object or a number."
    )
    initial_only: bool = Field(
        False,
        description="Write the value only while the secret has none: for values that runs rotate "
        "(a refresh token), which a later apply must not put back.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ValueFrom:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env or file")
        return self


class RefresherSpec(Strict):
    """A preset that writes the secret's refresh action (`POST /v1/secrets/{name}/refresher`)."""

    preset: PresetName
    params: dict[str, Any] = Field(default_factory=dict)


class SecretSpec(Strict):
    """A secret: its metadata, where its value comes from, and how it is refreshed."""

    name: SecretName
    description: Description = ""
    environment_specific: bool = True
    locked: bool = False
    value_from: ValueFrom | None = None
    refresh_endpoint: RefreshEndpoint | None = None
    refresher: RefresherSpec | None = None
    refresh_as: RefreshAs | None = None
    refresh_before_expiry_seconds: RefreshBeforeExpirySeconds | None = None
    # Absent: the stored list stays as it is (a refresher preset adds its token endpoint).
    allowed_destinations: AllowedDestinations | None = None
    # Declared only to refuse it with a message that says what to do instead.
    value: Any = Field(None, exclude=True)

    @field_validator("value", mode="before")
    @classmethod
    def _no_inline_value(cls, value: Any) -> Any:
        raise ValueError(INLINE_VALUE)


class RoleSpec(Strict):
    """A role (not a built-in one)."""

    name: RoleName
    description: Description = ""
    permissions: list[RolePermission] = Field(default_factory=list)


class ServiceAccountSpec(Strict):
    """A service account and the roles it holds (its API keys are made elsewhere)."""

    name: AccountName
    description: Description = ""
    roles: list[RoleName] = Field(default_factory=list)


class ScheduleSpec(Strict):
    """Runs `service`/`endpoint`, or the refresh of `secret`, on `cron` as `run_as`."""

    name: ScheduleName
    description: Description = ""
    service: str | None = Field(None, pattern=SLUG_PATTERN)
    endpoint: str | None = Field(None, pattern=READABLE_ID_PATTERN)
    secret: SecretName | None = Field(
        None, description="Run this secret's refresh endpoint (resolved when applied)."
    )
    cron: Annotated[Cron, AfterValidator(_cron)]
    timezone: Annotated[TimeZone, AfterValidator(_timezone)] = "UTC"
    run_as: str = Field(pattern=ACCOUNT_NAME_PATTERN)
    enabled: bool = True
    environments: Environments = None


class Document(Strict):
    """The whole configuration; a section left out is not managed."""

    version: int
    secrets: list[SecretSpec] | None = None
    services: list[ServiceCreate] | None = None
    roles: list[RoleSpec] | None = None
    service_accounts: list[ServiceAccountSpec] | None = None
    schedules: list[ScheduleSpec] | None = None
    # Exactly the body of `POST /v1/providers`.
    providers: list[ProviderCreate] | None = None

    @field_validator("version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        if version != DOCUMENT_VERSION:
            raise ValueError(f"unsupported version {version}; this tokenfarm reads version 1")
        return version


Kind = Literal["role", "service_account", "secret", "provider", "service", "schedule"]
SECTIONS: dict[Kind, str] = {
    "role": "roles",
    "service_account": "service_accounts",
    "secret": "secrets",
    "service": "services",
    "schedule": "schedules",
    "provider": "providers",
}
MANAGE_PERMISSIONS: dict[Kind, Permission] = {
    "role": Permission.ACCOUNTS_MANAGE,
    "service_account": Permission.ACCOUNTS_MANAGE,
    "secret": Permission.SECRETS_MANAGE,
    "service": Permission.SERVICES_MANAGE,
    "schedule": Permission.SCHEDULES_MANAGE,
    "provider": Permission.PROVIDERS_MANAGE,
}
