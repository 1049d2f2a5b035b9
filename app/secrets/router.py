"""HTTP routes of the secrets domain: thin, authorized, never returning a table object."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.responses import JSONResponse
from starlette.types import Scope

from app.auth.actor import Actor, ensure
from app.auth.dependencies import CurrentActor, require
from app.auth.permissions import Permission, secret_read
from app.config import Environment
from app.connect.secrets import create_connected
from app.dependencies import KeyringDep, OutboundDep, SessionDep, SettingsDep
from app.fastpath import FastPath
from app.handlers import retry_after
from app.middleware import received_at
from app.ratelimit import RouteKind
from app.runs.refresh import read_value
from app.runs.runner import RunOutcome
from app.schemas import ErrorResponse
from app.secrets.cache import ValueCache
from app.secrets.rules import CompanionUse, may_be_companion
from app.secrets.schemas import (
    MAX_MIN_VALID_SECONDS,
    RollbackRequest,
    SecretCreate,
    SecretRead,
    SecretSaved,
    SecretUpdate,
    SecretValueRead,
    SecretValueWrite,
    SecretVersionRead,
    ValueWritten,
)
from app.secrets.store import SecretStore

router = APIRouter(prefix="/v1/secrets", tags=["secrets"])
MANAGE = [Depends(require(Permission.SECRETS_MANAGE))]
NAME_PATH = {"examples": ["ACCESS_TOKEN"]}
ENVIRONMENT_QUERY = Query(None, description="Default: the service's environment.")


async def _store(session: SessionDep, keyring: KeyringDep, settings: SettingsDep) -> SecretStore:
    return SecretStore(session, keyring, settings)


StoreDep = Depends(_store)
MIN_VALID_QUERY = Query(
    None,
    ge=0,
    le=MAX_MIN_VALID_SECONDS,
    description="Refresh first (through the `refresh_endpoint`) when the value would expire "
    "within this many seconds.",
)
READ_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        403: "A permission is missing: `secrets.read:NAME`, or for a refresh `services.run:SLUG` "
        "(of the caller, or of the secret's `refresh_as` account); a refused run adds `run_id`",
        404: "No such secret, it has no value, or its `refresh_endpoint` no longer exists",
        409: "The value would expire within `min_valid_seconds` and can't be refreshed here, or "
        "the refresh was refused (`needs_reauth`, locked; then with `run_id` and `status`)",
        502: "The refresh failed upstream (with `run_id` and `status`; the value is unchanged)",
        429: "A rate limit was reached, per caller or per client address (`rate_limited`; "
        "`Retry-After` says when to try again)",
        503: "A refresh was needed, but the secret's refreshes keep failing and back off "
        "(`refresh_backoff`; `Retry-After` says when; nothing was called)",
        504: "The refresh timed out (with `run_id` and `status`; the value is unchanged)",
    }.items()
}


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=MANAGE)
async def create_secret(
    data: SecretCreate, actor: CurrentActor, outbound: OutboundDep, store: SecretStore = StoreDep
) -> SecretSaved:
    """Create a secret, optionally with its first value.

    With `provider`, a connected secret: it has no value until someone connects it (`POST
    /v1/secrets/{name}/connect-links`), its refresh token is kept by tokenfarm, and it is bound
    to a refresher (`refreshers/{name}`) that runs before it expires.
    """
    if data.provider is not None:
        secret = await create_connected(
            store.session, store.keyring, store.settings, data, actor, outbound
        )
    else:
        secret = await store.create(data, actor.label, caller=actor)
    return await store.saved(secret)


@router.get("", dependencies=MANAGE)
async def list_secrets(store: SecretStore = StoreDep) -> list[SecretRead]:
    """List every secret's metadata (never values)."""
    return await store.list_all()


@router.get("/{name}", dependencies=MANAGE)
async def get_secret(name: str, store: SecretStore = StoreDep) -> SecretRead:
    """Show one secret's metadata: status, expiry, version, refresh endpoint."""
    return await store.describe(await store.get(name, CompanionUse.SHOW))


@router.patch("/{name}", dependencies=MANAGE)
async def update_secret(
    name: str, data: SecretUpdate, actor: CurrentActor, store: SecretStore = StoreDep
) -> SecretSaved:
    """Change a secret's description, lock, refresh settings, allowed destinations or
    environment-specific flag."""
    secret = await store.update(await store.get(name, CompanionUse.CHANGE), data, caller=actor)
    return await store.saved(secret)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, dependencies=MANAGE)
async def delete_secret(name: str, store: SecretStore = StoreDep) -> Response:
    """Delete a secret with all its values and history."""
    await store.delete(await store.get(name, CompanionUse.DELETE))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put("/{name}/value", dependencies=MANAGE)
async def set_secret_value(
    name: str, data: SecretValueWrite, actor: CurrentActor, store: SecretStore = StoreDep
) -> ValueWritten:
    """Set a value by hand (a new version); answers the version, never the value."""
    secret = await store.get(name, CompanionUse.SET)
    return await store.set_value(
        secret,
        data.value,
        environment=data.environment,
        expires_at=data.expires_at,
        actor=actor.label,
        source="manual",
    )


@router.get("/{name}/value", response_model=SecretValueRead, responses=READ_RESPONSES)
async def read_secret_value(
    name: str,
    actor: CurrentActor,
    request: Request,
    environment: Environment | None = ENVIRONMENT_QUERY,
    min_valid_seconds: int | None = MIN_VALID_QUERY,
) -> Response:
    """Read the current value; needs `secrets.read:NAME`.

    With `min_valid_seconds`, a value that would expire sooner is refreshed first through the
    secret's `refresh_endpoint` (as its `refresh_as` account, else as the caller, who then needs
    `services.run:SLUG`); concurrent readers share one refresh. A failed refresh answers the
    run's error and `run_id`, and leaves the value as it was.
    """
    state = request.app.state
    await state.rate_limiter.check(request.scope, RouteKind.VALUE_READ, actor)
    ensure(actor, secret_read(name))
    if may_be_companion(name):
        async with state.session_factory() as session:
            await SecretStore(session, state.keyring, state.settings).get(name, CompanionUse.READ)
    read = await read_value(
        state.runner,
        state.value_cache,
        actor,
        name,
        environment=environment,
        min_valid_seconds=min_valid_seconds,
        received_at=received_at(request.scope),
    )
    if isinstance(read, RunOutcome):
        return _failed_refresh(read)
    return Response(read, media_type="application/json")


async def read_secret_value_fast(
    scope: Scope, actor: Actor, params: dict[str, str]
) -> bytes | None:
    """`read_secret_value`'s fast path: a plain read the value cache can answer, as the route
    answers it; anything else (a missing permission, no cached value) is the route's."""
    state = scope["app"].state
    await state.rate_limiter.check(scope, RouteKind.VALUE_READ, actor)
    name = params["name"]
    if not actor.can(secret_read(name)) or may_be_companion(name):
        return None  # a hidden companion is refused by the route
    cache: ValueCache = state.value_cache
    # The route's answer is `Response(body, media_type="application/json")`: the mechanism
    # sends these bytes as exactly that.
    return cache.answer(name, None, None)


FAST_PATHS = (FastPath(read_secret_value, read_secret_value_fast),)


def _failed_refresh(outcome: RunOutcome) -> JSONResponse:
    """A failed refresh as the run routes answer it: the run's status, error and `run_id`."""
    body = {"error": outcome.error_body, "run_id": outcome.run_id, "status": outcome.status}
    return JSONResponse(body, status_code=outcome.http_status, headers=retry_after(outcome.error))


@router.get("/{name}/versions", dependencies=MANAGE)
async def list_secret_versions(
    name: str,
    environment: Environment | None = ENVIRONMENT_QUERY,
    store: SecretStore = StoreDep,
) -> list[SecretVersionRead]:
    """The history of a secret's value, newest first (no values)."""
    return await store.versions(await store.get(name, CompanionUse.SHOW), environment)


@router.post("/{name}/rollback", dependencies=MANAGE)
async def rollback_secret(
    name: str, data: RollbackRequest, actor: CurrentActor, store: SecretStore = StoreDep
) -> ValueWritten:
    """Make an earlier version current again (written as a new version)."""
    secret = await store.get(name, CompanionUse.ROLL_BACK)
    return await store.rollback(secret, data.version, data.environment, actor.label)
