"""Refreshing a secret through its `refresh_endpoint`: on demand (`GET /refresh/{secret}`) and
before a value read that asks for `min_valid_seconds`.

The rules of who may refresh what, and as whom, live here; the routes (and their fast paths) only
parse, authorize, call these and turn what they answer into a response. Nothing here knows HTTP:
errors are raised as domain errors, and a finished refresh is answered as data (`RefreshAnswer`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.accounts import AccountStore
from app.auth.actor import Actor, refuse
from app.auth.permissions import Permission, Scoped, service_run, service_run_wanted
from app.db import utcnow
from app.errors import Conflict, DatabaseUnavailable, NotFound, PermissionDenied, RefreshBackingOff
from app.events import RefreshRefused
from app.ratelimit import RouteKind
from app.runs.record import RUN_SECRET_TABLE, RUN_TABLE
from app.runs.runner import RefreshTarget, Runner, RunOutcome
from app.runs.schemas import RefreshResult
from app.secrets.cache import CachedValue, ValueCache
from app.secrets.expiry import backoff_after_failure
from app.secrets.models import Secret
from app.secrets.store import SecretStore, expires_within

# When the runs that marked a secret failed ended: failed runs that ran (an error class; a
# refusal before any call has none) and targeted it.
_LAST_FAILURE = (
    select(func.max(RUN_TABLE.c.finished_at))
    .join_from(RUN_TABLE, RUN_SECRET_TABLE, RUN_SECRET_TABLE.c.run_id == RUN_TABLE.c.id)
    .where(
        RUN_SECRET_TABLE.c.secret_name == bindparam("name"),
        RUN_TABLE.c.status == "failed",
        RUN_TABLE.c.error_class.is_not(None),
    )
)


def ensure_can_run(actor: Actor, slug: str, readable_id: str) -> None:
    """Running needs `services.run:SLUG` or `services.run:SLUG/ID`."""
    if not actor.can_run(slug, readable_id):
        refuse(actor, service_run(slug), f" or {service_run(slug, readable_id)!r}")


def run_fields(outcome: RunOutcome) -> dict[str, Any]:
    """The fields every run answer (`RunResult` and what extends it) shares."""
    failed = outcome.error_body is not None
    return {
        "run_id": outcome.run_id,
        "status": outcome.status,
        "error": outcome.error_body,
        "response": None if failed else outcome.response,
        "coalesced": outcome.coalesced,
        "adopted": outcome.adopted,
    }


@dataclass(frozen=True)
class RefreshAnswer:
    """A finished refresh: the result, and the run's outcome (its status and error)."""

    result: RefreshResult
    outcome: RunOutcome


def backing_off_until(secret: Secret, last_failed_at: datetime, after_failures: int) -> datetime:
    """When on-demand refreshes of a secret that failed `failure_count` times in a row (the last
    at `last_failed_at`) may run again: the expiry-driven backoff (30 s, doubling, at most an
    hour, up to 10 % more), counted from the `after_failures`-th failure. The jitter is drawn
    from the secret's name and failure count, so every replica and every call agree."""
    attempt = secret.failure_count - after_failures + 1
    # Not a secret: the jitter only spreads load, and must be the same on every replica.
    rng = random.Random(f"{secret.name}/{secret.failure_count}")  # noqa: S311
    return backoff_after_failure(attempt, last_failed_at, rng=rng)


async def ensure_not_backing_off(
    session: AsyncSession, secret: Secret, runner: Runner, route: RouteKind
) -> None:
    """Refuse (503 `refresh_backoff`, with Retry-After) an on-demand refresh of a secret whose
    refreshes keep failing (`TOKENFARM_REFRESH_BACKOFF_AFTER_FAILURES` in a row) until its
    backoff has passed; nothing is called. The one check of `/refresh`, its fast path and
    refresh on read."""
    after_failures = runner.settings.refresh_backoff_after_failures
    if secret.status != "failing" or secret.failure_count < after_failures:
        return
    last_failed_at = (await session.execute(_LAST_FAILURE, {"name": secret.name})).scalar()
    if last_failed_at is None:
        return  # no run failed it (e.g. the scheduler could not start one): nothing to wait for
    wait_seconds = (
        backing_off_until(secret, last_failed_at, after_failures) - utcnow()
    ).total_seconds()
    if wait_seconds <= 0:
        return
    if runner.events is not None:
        runner.events.emit(RefreshRefused(route, secret.name))
    raise RefreshBackingOff(
        f"secret {secret.name!r} failed its last {secret.failure_count} refreshes; on-demand "
        "refreshes wait until its backoff has passed (see its last_error with GET "
        f"/v1/secrets/{secret.name}); nothing was called. Someone holding secrets.manage may "
        f"force one with GET /refresh/{secret.name}?force=true",
        retry_after_seconds=wait_seconds,
        secret=secret.name,
    )


async def start_refresh(
    runner: Runner, actor: Actor, secret: str, *, force: bool, received_at: float | None
) -> RefreshTarget:
    """The checks and the lookup of a refresh (nothing is called yet; every error is raised)."""
    if not actor.may_hold_any(Scoped.SERVICES_RUN.prefix):
        # Refused before the lookup, so no one without run rights learns which secrets exist.
        refuse(actor, service_run("SLUG"))
    # The secret, its endpoint and the secrets that uses, in one read (no session of the
    # request's own: none may stay open across the outbound call).
    target = await runner.prepare_refresh(secret, force=force, received_at=received_at)
    ensure_can_run(actor, target.slug, target.readable_id)
    prepared = target.prepared
    # A run to share calls nothing more; an operator's force skips the backoff.
    if prepared is not None and not (force and actor.can(Permission.SECRETS_MANAGE)):
        failing = sorted(
            name
            for name in prepared.target_names
            if (loaded := prepared.secrets.get(name)) is not None
            and loaded.secret.status == "failing"
        )
        if failing:
            async with runner.session_factory() as session:
                store = SecretStore(session, runner.keyring, runner.settings)
                for name in failing:
                    await ensure_not_backing_off(
                        session, await store.get(name), runner, RouteKind.REFRESH
                    )
    return target


async def finish_refresh(
    runner: Runner,
    actor: Actor,
    secret: str,
    target: RefreshTarget,
    *,
    force: bool,
    received_at: float | None,
) -> RefreshAnswer:
    """Run (or share) a refresh `start_refresh` allowed: the run and the secret's state after it."""
    outcome = await runner.run_endpoint(
        target.slug,
        target.readable_id,
        actor=actor,
        trigger="refresh",
        force=force,
        received_at=received_at,
        prepared=target.prepared,
    )
    # The run says what it stored; only otherwise (it failed, or it shared or adopted a run
    # that stored nothing for this secret) is the secret's state read again.
    stored = outcome.stored.get(secret)
    version: int | None
    if stored is not None:
        version, expires_at = stored.version, stored.expires_at
    elif isinstance(outcome.error, DatabaseUnavailable):
        version, expires_at = None, None  # the database can't say; the run's error says why
    else:
        async with runner.session_factory() as session:
            store = SecretStore(session, runner.keyring, runner.settings)
            state = await store.describe(await store.get(secret))
        version, expires_at = state.version, state.expires_at
    result = RefreshResult.model_validate(
        {**run_fields(outcome), "secret": secret, "version": version, "expires_at": expires_at}
    )
    return RefreshAnswer(result, outcome)


async def read_value(
    runner: Runner,
    cache: ValueCache,
    actor: Actor,
    name: str,
    *,
    environment: str | None,
    min_valid_seconds: int | None,
    received_at: float | None,
) -> bytes | RunOutcome:
    """A value read whose permission the caller was checked for: the `SecretValueRead` body
    (from the cache when it can answer), refreshed first when it would expire within
    `min_valid_seconds`; or the outcome of that refresh when it failed (the value is then left
    as it was)."""
    body = cache.answer(name, environment, min_valid_seconds)
    if body is not None:
        return body
    # No session is opened for an answer from the cache: the read makes its own.
    async with runner.session_factory() as session:
        store = SecretStore(session, runner.keyring, runner.settings)
        version = cache.version()
        secret, current = await store.get_current(name, environment)
        if min_valid_seconds is not None and expires_within(
            current.expires_at if current else None, min_valid_seconds
        ):
            outcome = await _refresh_for_read(
                store, secret, actor, runner, environment, min_valid_seconds, received_at
            )
            if outcome.error_body is not None:
                return outcome
            version = cache.version()
            secret, current = await store.get_current(name, environment)
        value = CachedValue.of(store.read_value(secret, current, environment))
    cache.put(name, environment, value, version)
    return value.body


async def _refresh_for_read(
    store: SecretStore,
    secret: Secret,
    caller: Actor,
    runner: Runner,
    environment: str | None,
    seconds: int,
    received_at: float | None,
) -> RunOutcome:
    """Run the secret's `refresh_endpoint` for a reader (trigger `read`)."""
    name = secret.name
    if not secret.refresh_endpoint:
        raise Conflict(
            f"secret {name!r} expires within {seconds} s and has no refresh_endpoint to refresh "
            f"it; bind one with PATCH /v1/secrets/{name} "
            '{"refresh_endpoint": "SLUG/READABLE_ID"}, or read without min_valid_seconds'
        )
    wanted = store.value_environment(secret, environment)
    if wanted != store.value_environment(secret):
        raise Conflict(
            f"secret {name!r} expires within {seconds} s in environment {wanted!r}; this "
            f"deployment refreshes only its own environment ({store.settings.environment!r})"
        )
    slug, readable_id = secret.refresh_endpoint.split("/", 1)
    run_as = await _refresh_actor(store, secret, caller, slug, readable_id)
    await ensure_not_backing_off(store.session, secret, runner, RouteKind.VALUE_READ)
    # The read's session must not hold a transaction open across the outbound call.
    await store.session.commit()
    outcome = await runner.run_endpoint(
        slug, readable_id, actor=run_as, trigger="read", received_at=received_at
    )
    await store.session.commit()
    return outcome


async def _refresh_actor(
    store: SecretStore, secret: Secret, caller: Actor, slug: str, readable_id: str
) -> Actor:
    """Who a refresh on read runs as: the secret's `refresh_as` account, else the caller."""
    if secret.refresh_as is None:
        ensure_can_run(caller, slug, readable_id)
        return caller
    try:
        account = await AccountStore(store.session).actor_for_service_account(secret.refresh_as)
    except NotFound:
        raise Conflict(
            f"secret {secret.name!r} is refreshed as service account {secret.refresh_as!r}, "
            f"which no longer exists; set another refresh_as with PATCH /v1/secrets/{secret.name}"
        ) from None
    if not account.can_run(slug, readable_id):
        permission = service_run(slug)
        raise PermissionDenied(
            f"secret {secret.name!r} is refreshed as service account {account.name!r}, which "
            f"needs the permission {service_run_wanted(slug, readable_id)}",
            permission=permission,
        )
    return account
