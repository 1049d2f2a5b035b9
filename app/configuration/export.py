"""The live configuration as a document that `apply` reproduces — never a value.

A secret that holds a value in this environment gets `value_from: {env: NAME}`, a placeholder to
fill before applying elsewhere; one whose value a run wrote (a rotating token) also gets
`initial_only: true`, so re-applying never puts back an old token. Preset refreshers come out
as what they are stored as: the `refreshers` service and each secret's `refresh_endpoint`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.auth.accounts import AccountStore
from app.config import Settings
from app.configuration.document import DOCUMENT_VERSION
from app.configuration.plan import ROTATED_SOURCES
from app.schedules.store import ScheduleStore
from app.secrets.models import ALL_ENVIRONMENTS, Secret, SecretValue, SecretVersion
from app.services.store import ServiceStore


def env_name(secret: str, taken: set[str]) -> str:
    """The placeholder variable of a secret's value: its name in upper case, `-` as `_`."""
    base = secret.upper().replace("-", "_")
    name, number = base, 2
    while name in taken:
        name, number = f"{base}_{number}", number + 1
    taken.add(name)
    return name


async def export_document(session: AsyncSession, settings: Settings) -> dict[str, Any]:
    """Every role (but the built-in ones), service account, secret, service and schedule."""
    accounts = AccountStore(session)
    roles = [
        _without_defaults(
            {"name": role.name, "description": role.description, "permissions": role.permissions}
        )
        for role in await accounts.roles()
        if not role.builtin
    ]
    service_accounts = []
    for account in await accounts.service_accounts():
        read = await accounts.describe_service_account(account)
        service_accounts.append(
            _without_defaults(
                {"name": read.name, "description": read.description, "roles": read.roles}
            )
        )
    return {
        "version": DOCUMENT_VERSION,
        "roles": roles,
        "service_accounts": service_accounts,
        "secrets": await _secrets(session, settings),
        "services": await _services(session),
        "schedules": await _schedules(session),
    }


async def _secrets(session: AsyncSession, settings: Settings) -> list[dict[str, Any]]:
    # Hidden companions (a connected secret's refresh token) are never exported.
    query = select(Secret).where(col(Secret.companion_of).is_(None)).order_by(col(Secret.name))
    secrets = (await session.execute(query)).scalars().all()
    taken: set[str] = set()
    exported = []
    for secret in secrets:
        environment = settings.environment if secret.environment_specific else ALL_ENVIRONMENTS
        current = (
            await session.execute(
                select(SecretValue).where(
                    col(SecretValue.secret_id) == secret.id,
                    col(SecretValue.environment) == environment,
                )
            )
        ).scalar_one_or_none()
        entry: dict[str, Any] = {
            "name": secret.name,
            "description": secret.description,
            "environment_specific": secret.environment_specific,
            "locked": secret.locked,
        }
        if current is not None:
            value_from: dict[str, Any] = {"env": env_name(secret.name, taken)}
            source = (
                await session.execute(
                    select(col(SecretVersion.source)).where(
                        col(SecretVersion.secret_id) == secret.id,
                        col(SecretVersion.environment) == environment,
                        col(SecretVersion.version) == current.version,
                    )
                )
            ).scalar_one_or_none()
            if source in ROTATED_SOURCES:
                value_from["initial_only"] = True
            entry["value_from"] = value_from
        entry.update(
            refresh_endpoint=secret.refresh_endpoint,
            refresh_as=secret.refresh_as,
            refresh_before_expiry_seconds=secret.refresh_before_expiry_seconds,
            allowed_destinations=secret.allowed_destinations,
        )
        exported.append(_without_defaults(entry))
    return exported


async def _services(session: AsyncSession) -> list[dict[str, Any]]:
    store = ServiceStore(session)
    exported = []
    for service in await store.list_all():
        endpoints = [
            _without_defaults(
                {
                    "readable_id": endpoint.readable_id,
                    "name": endpoint.name,
                    "description": endpoint.description,
                    "methods": endpoint.methods,
                    "enable_log": endpoint.enable_log,
                    "action": endpoint.action,
                }
            )
            for endpoint in service.endpoints
        ]
        exported.append(
            _without_defaults(
                {
                    "slug": service.slug,
                    "name": service.name,
                    "description": service.description,
                    "variables": [v.model_dump(mode="json") for v in service.variables],
                    "endpoints": endpoints,
                }
            )
        )
    return exported


async def _schedules(session: AsyncSession) -> list[dict[str, Any]]:
    store = ScheduleStore(session)
    exported = []
    for schedule in await store.list_all():
        read = store.describe(schedule)
        exported.append(
            _without_defaults(
                {
                    "name": read.name,
                    "description": read.description,
                    "service": read.service,
                    "endpoint": read.endpoint,
                    "cron": read.cron,
                    "timezone": read.timezone,
                    "run_as": read.run_as,
                    "enabled": read.enabled,
                    "environments": read.environments,
                }
            )
        )
    return exported


# Fields left out when they hold their default, so the export reads like a hand-written file.
DEFAULTS: dict[str, Any] = {
    "description": "",
    "locked": False,
    "environment_specific": True,
    "refresh_endpoint": None,
    "refresh_as": None,
    "refresh_before_expiry_seconds": None,
    "allowed_destinations": None,
    "enabled": True,
    "environments": None,
    "variables": [],
    "enable_log": False,
    "permissions": [],
    "roles": [],
}


def _without_defaults(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value for key, value in entry.items() if key not in DEFAULTS or value != DEFAULTS[key]
    }


def render(document: dict[str, Any], settings: Settings) -> str:
    """The document as YAML, with a header that says how to apply it."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    header = (
        f"# tokenfarm configuration, exported {stamp} (environment {settings.environment}).\n"
        "# Values are never exported: before `tokenfarm apply -f` this file, set the environment\n"
        "# variables its value_from entries name (initial_only ones only where the secret has no\n"
        "# value yet).\n"
    )
    body = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
    return header + body
