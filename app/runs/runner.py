"""The run service: load an endpoint and its secrets, check every write target, walk the action,
then store every write at once (compare-and-set) and record the run.

No database transaction stays open across an outbound call: loading and storing are two short
transactions around the engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.actor import Actor
from app.config import Settings
from app.crypto import Keyring
from app.db import utcnow
from app.errors import (
    Conflict,
    InternalError,
    MethodNotAllowed,
    PermissionDenied,
    RunFailed,
    SecretLocked,
    SecretNotEnvironmentSpecific,
    StorageFailed,
    TokenfarmError,
)
from app.outbound import Outbound
from app.pipeline.analysis import referenced_secrets, update_targets
from app.pipeline.context import RequestData, RunContext
from app.pipeline.nodes import execute
from app.pipeline.schemas import parse_action
from app.runs.models import Run, RunSecret
from app.secrets.store import LoadedSecret, SecretStore
from app.services.models import Endpoint, Service
from app.services.store import ServiceStore

logger = logging.getLogger("tokenfarm.run")


def storable(text: str | None) -> str | None:
    """Text every database stores: messages quote upstream answers, and PostgreSQL refuses NUL."""
    return None if text is None else text.replace("\x00", "\ufffd")


@dataclass
class RunOutcome:
    """What a run ended with, already redacted."""

    run_id: str
    status: str
    http_status: int
    error: TokenfarmError | None = None
    error_body: dict[str, Any] | None = None
    response: Any = None
    written: list[str] = field(default_factory=list)


@dataclass
class Turn:
    """The single-flight lock of one endpoint and how many runs hold or await it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


@dataclass
class PreparedRun:
    """An endpoint loaded for a run, with the secrets it reads and writes."""

    service: Service
    endpoint: Endpoint
    nodes: list[Any]
    targets: list[tuple[str, str]]
    secrets: dict[str, LoadedSecret | None]


class Runner:
    """Runs endpoints; one instance per app, shared by every request."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        keyring: Keyring,
        outbound: Outbound,
        settings: Settings,
        clock: Any = time.time,
    ) -> None:
        self.session_factory = session_factory
        self.keyring = keyring
        self.outbound = outbound
        self.settings = settings
        self.clock = clock
        # Single flight per endpoint (in this process): two concurrent refreshes would both
        # spend the same rotating refresh token, and the reuse revokes its whole family.
        self._turns: dict[tuple[str, str], Turn] = {}

    @asynccontextmanager
    async def _turn(self, slug: str, readable_id: str) -> AsyncIterator[None]:
        """Wait for this endpoint's earlier runs; entries go away once nobody waits."""
        key = (slug, readable_id)
        turn = self._turns.setdefault(key, Turn())
        turn.users += 1
        try:
            async with turn.lock:
                yield
        finally:
            turn.users -= 1
            if not turn.users:
                del self._turns[key]

    async def _prepare(self, slug: str, readable_id: str, method: str | None) -> PreparedRun:
        """Load the endpoint and its secrets in one short read-only transaction."""
        async with self.session_factory() as session:
            service, endpoint = await ServiceStore(session).get_endpoint(slug, readable_id)
            if method is not None and method not in endpoint.methods:
                raise MethodNotAllowed(
                    f"endpoint {slug}/{readable_id} accepts {', '.join(endpoint.methods)}, "
                    f"not {method}",
                    allowed=endpoint.methods,
                )
            nodes = parse_action(endpoint.action)
            store = SecretStore(session, self.keyring, self.settings)
            secrets = await store.load_for_run(referenced_secrets(nodes))
            return PreparedRun(service, endpoint, nodes, update_targets(nodes), secrets)

    @staticmethod
    def _preflight(prepared: PreparedRun, actor: Actor) -> None:
        """Refuse the run before any node runs if a write target could not be stored."""
        for path, name in prepared.targets:
            if not actor.can(f"secrets.update_from_service:{name}"):
                raise PermissionDenied(
                    f"{path}: writing secret {name!r} needs the permission "
                    f"'secrets.update_from_service:{name}'; nothing was called",
                    permission=f"secrets.update_from_service:{name}",
                    secret=name,
                )
            loaded = prepared.secrets.get(name)
            if loaded is None:
                raise Conflict(
                    f"{path}: secret {name!r} does not exist; create it first", secret=name
                )
            if loaded.secret.locked:
                raise SecretLocked(
                    f"{path}: secret {name!r} is locked; runs never write it", secret=name
                )
            if not loaded.secret.environment_specific:
                raise SecretNotEnvironmentSpecific(
                    f"{path}: secret {name!r} is not environment-specific; runs only write "
                    "environment-specific secrets",
                    secret=name,
                )

    async def run_endpoint(
        self,
        slug: str,
        readable_id: str,
        *,
        actor: Actor,
        trigger: str,
        method: str | None = None,
        request: RequestData | None = None,
    ) -> RunOutcome:
        """Run one endpoint end to end; NotFound/MethodNotAllowed are raised, all else is a run.

        Runs of one endpoint take turns, each loading the secrets its predecessor wrote.
        """
        async with self._turn(slug, readable_id):
            return await self._run(
                slug, readable_id, actor=actor, trigger=trigger, method=method, request=request
            )

    async def _run(
        self,
        slug: str,
        readable_id: str,
        *,
        actor: Actor,
        trigger: str,
        method: str | None,
        request: RequestData | None,
    ) -> RunOutcome:
        """One run: load, check, walk the action, store the outcome."""
        prepared = await self._prepare(slug, readable_id, method)
        run_id = str(uuid.uuid4())
        started_at = utcnow()
        started = time.perf_counter()
        variables = {v["name"]: v.get("default") for v in prepared.service.variables}
        secret_values = {
            name: loaded.value for name, loaded in prepared.secrets.items() if loaded is not None
        }
        ctx = RunContext(
            run_id=run_id,
            actor=actor,
            outbound=self.outbound,
            variables=variables,
            secrets=secret_values,
            request=request or RequestData(),
            clock=self.clock,
        )
        for value in secret_values.values():
            ctx.redactor.add(value)
        error: TokenfarmError | None = None
        try:
            self._preflight(prepared, actor)
            await execute(prepared.nodes, ctx)
        except TokenfarmError as exc:
            error = exc
        except Exception as exc:
            # Only the class name: an exception message may quote a value.
            logger.error(
                "run %s of %s/%s crashed: %s", run_id, slug, readable_id, type(exc).__name__
            )
            error = InternalError(
                f"the run failed unexpectedly ({type(exc).__name__}); see the server log"
            )
        outcome = await self._finish(prepared, ctx, error, trigger, started_at, started)
        logger.info(
            "run %s of %s/%s by %s (%s): %s in %.1f ms%s",
            run_id,
            slug,
            readable_id,
            actor.label,
            trigger,
            outcome.status,
            (time.perf_counter() - started) * 1000,
            f" [{outcome.error_body['type']}]" if outcome.error_body else "",
        )
        return outcome

    async def _finish(
        self,
        prepared: PreparedRun,
        ctx: RunContext,
        error: TokenfarmError | None,
        trigger: str,
        started_at: datetime,
        started: float,
    ) -> RunOutcome:
        """Store the writes (all or none) with the run record, or record the failure."""
        outcome = RunOutcome(run_id=ctx.run_id, status="succeeded", http_status=200)
        try:
            if error is None:
                try:
                    async with self.session_factory() as session, session.begin():
                        outcome.written = await self._store_writes(session, prepared, ctx)
                        outcome.response = ctx.redactor.value(ctx.result)
                        if prepared.endpoint.enable_log:
                            self._record(
                                session, prepared, ctx, outcome, trigger, started_at, started
                            )
                    return outcome
                except TokenfarmError as exc:
                    # The transaction rolled back: none of this run's writes stayed.
                    error, outcome.written = exc, []
            outcome.status, outcome.http_status, outcome.error = "failed", error.status_code, error
            outcome.error_body = ctx.redactor.value(error.to_body())
            async with self.session_factory() as session, session.begin():
                if isinstance(error, RunFailed):
                    # Only a failure of the refresh itself marks the secret: not a refused
                    # pre-flight (a caller without permission must not flag it) nor a lost
                    # compare-and-set (someone else wrote it).
                    await self._mark_targets_failed(session, prepared, outcome.error_body)
                self._record(session, prepared, ctx, outcome, trigger, started_at, started)
        except SQLAlchemyError as exc:
            logger.error("run %s: storing the outcome failed: %s", ctx.run_id, type(exc).__name__)
            failure = StorageFailed("the run's outcome could not be stored; nothing was written")
            outcome = RunOutcome(
                run_id=ctx.run_id,
                status="failed",
                http_status=failure.status_code,
                error=failure,
                error_body=failure.to_body(),
            )
        return outcome

    async def _store_writes(
        self, session: AsyncSession, prepared: PreparedRun, ctx: RunContext
    ) -> list[str]:
        """Write every pending secret compare-and-set on the version the run started from."""
        store = SecretStore(session, self.keyring, self.settings)
        now = utcnow()
        for name, write in ctx.writes.items():
            loaded = prepared.secrets[name]
            assert loaded is not None  # the pre-flight check guarantees it
            secret = await store.get(name)
            await store.set_value(
                secret,
                write.value,
                expires_at=write.expires_at,
                actor=ctx.actor.label,
                source="run",
                run_id=ctx.run_id,
                expected_version=loaded.version,
            )
            secret.last_refreshed_at = now
            secret.status = "ok"
            secret.last_error = None
        return list(ctx.writes)

    async def _mark_targets_failed(
        self, session: AsyncSession, prepared: PreparedRun, error_body: dict[str, Any]
    ) -> None:
        """Note the failure on every secret the run meant to write (its value stays as it was)."""
        store = SecretStore(session, self.keyring, self.settings)
        for name in {name for _, name in prepared.targets}:
            loaded = prepared.secrets.get(name)
            if loaded is None or loaded.secret.locked or not loaded.secret.environment_specific:
                continue
            secret = await store.get(name)
            secret.status = "failing"
            secret.last_error = storable(f"{error_body['type']}: {error_body['message']}"[:2000])

    def _record(
        self,
        session: AsyncSession,
        prepared: PreparedRun,
        ctx: RunContext,
        outcome: RunOutcome,
        trigger: str,
        started_at: datetime,
        started: float,
    ) -> None:
        """Add the run row, its redacted trace and the secrets it targeted."""
        error = outcome.error_body or {}
        session.add(
            Run(
                id=ctx.run_id,
                service_slug=prepared.service.slug,
                endpoint_readable_id=prepared.endpoint.readable_id,
                trigger=trigger,
                actor=ctx.actor.label,
                status=outcome.status,
                http_status=outcome.http_status,
                error_type=storable(error.get("type")),
                error_message=storable(error.get("message")),
                started_at=started_at,
                finished_at=utcnow(),
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
                trace=ctx.redactor.value(ctx.trace),
            )
        )
        for name in sorted({name for _, name in prepared.targets}):
            written = name in outcome.written
            session.add(RunSecret(run_id=ctx.run_id, secret_name=name, written=written))
