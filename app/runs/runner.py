"""The run service: load an endpoint and its secrets, check every write target, walk the action,
then store every write at once (compare-and-set) and record the run.

No database transaction holding data stays open across an outbound call: loading and storing are
short transactions around the engine. Runs of one endpoint are single-flight: concurrent callers
without request data share one execution (in this process), and a run takes turns with every run
of its endpoint or of one of its secrets, across replicas too (app/runs/flights.py). A run that
waited and finds its targets already refreshed by another run adopts that result instead of
calling the upstream again. The runner owns the transaction that stores a run: in it, it calls
the secrets' statements (app/secrets/sql.py), then the run record's (app/runs/record.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.auth.actor import Actor
from app.auth.permissions import secret_update_from_service
from app.config import Settings
from app.crypto import Keyring
from app.db import utcnow
from app.errors import (
    Conflict,
    InternalError,
    MethodNotAllowed,
    NeedsReauth,
    PermissionDenied,
    RunFailed,
    SecretLocked,
    SecretNotEnvironmentSpecific,
    StorageFailed,
    Superseded,
    TokenfarmError,
    UpstreamFailed,
    VersionConflict,
)
from app.events import Events, RunFinished
from app.outbound import Outbound
from app.pipeline.analysis import compile_action
from app.pipeline.context import RequestData, RunContext
from app.pipeline.engine import execute
from app.runs.flights import Flight, Flights, Turns, adopt, changed_versions, turns_of
from app.runs.record import PreparedRun, RunOutcome, RunRecord
from app.secrets import health, sql
from app.secrets.rules import Unwritable, why_runs_cannot_write
from app.secrets.schemas import ValueWritten
from app.secrets.sql import LoadedSecret, ValueWrite
from app.secrets.store import SecretStore, checked_value
from app.services.store import ServiceStore

__all__ = ["PreparedRun", "RefreshTarget", "RunOutcome", "Runner"]

logger = logging.getLogger("tokenfarm.run")


@dataclass
class RefreshTarget:
    """The endpoint a secret's refresh runs; `prepared` is None when a run of it was there to
    share (if it is gone by the time the caller asks, `run_endpoint` loads it itself)."""

    slug: str
    readable_id: str
    prepared: PreparedRun | None


@dataclass
class Job:
    """Who runs an endpoint, why, and with what."""

    actor: Actor
    trigger: str
    method: str | None
    request: RequestData | None
    force: bool
    run_id: str | None = None
    schedule_name: str | None = None
    prepared: PreparedRun | None = None  # loaded by the caller, not yet waited for


class Runner:
    """Runs endpoints; one instance per app, shared by every request."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        keyring: Keyring,
        outbound: Outbound,
        settings: Settings,
        clock: Any = time.time,
        lock_engine: AsyncEngine | None = None,
        events: Events | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.keyring = keyring
        self.outbound = outbound
        self.settings = settings
        self.clock = clock
        self.events = events
        self.turns = Turns(lock_engine)
        self.flights = Flights()
        self._tasks: set[asyncio.Task[RunOutcome]] = set()

    # --- entry points ----------------------------------------------------------------------

    async def run_endpoint(
        self,
        slug: str,
        readable_id: str,
        *,
        actor: Actor,
        trigger: str,
        method: str | None = None,
        request: RequestData | None = None,
        force: bool = False,
        run_id: str | None = None,
        schedule_name: str | None = None,
        received_at: float | None = None,
        prepared: PreparedRun | None = None,
    ) -> RunOutcome:
        """Run one endpoint end to end; NotFound/MethodNotAllowed are raised, all else is a run.

        A run without request data (a refresh, a read) joins the run of the same endpoint
        already in flight, if there is one; with `received_at` (the `time.monotonic()` its
        request arrived at), also the last run, if that landed after the request arrived. Every
        run goes on to its end even if its caller goes away: its upstream may already have
        rotated a token. `prepared`: the endpoint as the caller already loaded it (see
        `prepare_refresh`), instead of loading it again.
        """
        job = Job(actor, trigger, method, request, force, run_id, schedule_name, prepared)
        if request is not None or schedule_name is not None:
            # It reads the caller's request, or it is a schedule's tick that must be recorded as
            # that tick: it is nobody else's run.
            return await self._detached(self._in_turn(slug, readable_id, job, None))
        key = (slug, readable_id, force)
        flight = self.flights.shared(key, received_at)
        if flight is not None and flight.task is not None:
            await flight.loaded.wait()
            if flight.admits(actor) or flight.targets is None:
                outcome = await asyncio.shield(flight.task)
                return replace(outcome, coalesced=True)
            # It lacks a permission the run needs: it runs (and is refused) on its own.
            return await self._detached(self._in_turn(slug, readable_id, job, None))
        flight, landed = self.flights.board(key, lambda: self.settings.run_deadline_seconds)
        task = self._spawn(self._in_turn(slug, readable_id, job, flight))
        flight.task = task
        task.add_done_callback(landed)
        return await asyncio.shield(task)

    async def drain(self, timeout_seconds: float) -> None:
        """Wait (at shutdown) for runs in flight to store what their upstream answered."""
        pending = [task for task in self._tasks if not task.done()]
        if pending:
            logger.info("waiting for %d run(s) in flight", len(pending))
            await asyncio.wait(pending, timeout=timeout_seconds)

    def _spawn(self, work: Coroutine[Any, Any, RunOutcome]) -> asyncio.Task[RunOutcome]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)

        def forget(done: asyncio.Task[RunOutcome]) -> None:
            self._tasks.discard(done)
            if not done.cancelled():
                done.exception()  # retrieved: every caller may have gone away

        task.add_done_callback(forget)
        return task

    async def _detached(self, work: Coroutine[Any, Any, RunOutcome]) -> RunOutcome:
        return await asyncio.shield(self._spawn(work))

    async def _in_turn(
        self, slug: str, readable_id: str, job: Job, flight: Flight | None
    ) -> RunOutcome:
        """Load, wait for the run's turns (in this process, then across replicas), run.

        Whatever was loaded before waiting is read again once it is this run's turn: the run
        that went first may have rotated the refresh token. A run without request data whose
        targets were refreshed meanwhile adopts that result instead of calling again.
        """
        try:
            snapshot = job.prepared or await self._prepare(slug, readable_id, job.method)
            if flight is not None:
                flight.targets = snapshot.target_names
                flight.loaded.set()
            turns = turns_of(slug, readable_id, snapshot.target_names, self.settings.environment)
            deadline_seconds = self.settings.run_deadline_seconds
            async with (
                self.turns.in_process(turns) as waited,
                self.turns.across_replicas(turns, deadline_seconds) as locked,
            ):
                prepared = snapshot
                if waited or locked:
                    prepared = await self._prepare(slug, readable_id, job.method)
                    if not prepared.target_names <= snapshot.target_names:
                        raise Conflict(
                            f"the action of {slug}/{readable_id} changed while the run waited "
                            "for its turn and now writes other secrets; nothing was called, "
                            "try again"
                        )
                    # A call with request data, or a schedule's tick (each is logged as its
                    # own run), never stands in for another run.
                    adopted = (
                        await adopt(self.session_factory, snapshot, prepared.secrets)
                        if job.request is None
                        and job.schedule_name is None
                        and job.actor.can_write_all(prepared.target_names)
                        else None
                    )
                    if adopted is not None:
                        return adopted
                return await self._run(prepared, job)
        except SQLAlchemyError as exc:
            logger.error("run of %s/%s: the database failed: %s", slug, readable_id, type(exc))
            failure = StorageFailed("the database could not be reached; nothing was called")
            return RunOutcome(
                run_id=job.run_id or str(uuid.uuid4()),
                status="failed",
                http_status=failure.status_code,
                error=failure,
                error_body=failure.to_body(),
            )
        finally:
            if flight is not None:
                flight.loaded.set()

    # --- loading and checking ----------------------------------------------------------------

    async def prepare_refresh(
        self, secret: str, *, force: bool = False, received_at: float | None = None
    ) -> RefreshTarget:
        """The `refresh_endpoint` of a secret, loaded for a run: the secret, the endpoint and the
        secrets it uses in one short read-only transaction (a refresh's lookups, all at once);
        not loaded when a run of it is there for this caller to share (`run_endpoint` decides).
        NotFound for an unknown secret, Conflict for one without a refresh endpoint."""
        async with self.session_factory() as session:
            store = SecretStore(session, self.keyring, self.settings)
            refresh_endpoint = await store.refresh_endpoint(secret)
            if not refresh_endpoint:
                raise Conflict(
                    f"secret {secret!r} has no refresh_endpoint; bind one with PATCH "
                    f'/v1/secrets/{secret} {{"refresh_endpoint": "SLUG/READABLE_ID"}}'
                )
            slug, readable_id = refresh_endpoint.split("/", 1)
            if self.flights.shared((slug, readable_id, force), received_at) is not None:
                # In a burst most callers only join: they skip loading what the run loaded.
                return RefreshTarget(slug, readable_id, None)
            prepared = await self._load(session, slug, readable_id, None)
            return RefreshTarget(slug, readable_id, prepared)

    async def _prepare(self, slug: str, readable_id: str, method: str | None) -> PreparedRun:
        """Load the endpoint and its secrets in one short read-only transaction."""
        async with self.session_factory() as session:
            return await self._load(session, slug, readable_id, method)

    async def _load(
        self, session: AsyncSession, slug: str, readable_id: str, method: str | None
    ) -> PreparedRun:
        service, endpoint = await ServiceStore(session).get_endpoint(slug, readable_id)
        if method is not None and method not in endpoint.methods:
            raise MethodNotAllowed(
                f"endpoint {slug}/{readable_id} accepts {', '.join(endpoint.methods)}, "
                f"not {method}",
                allowed=endpoint.methods,
            )
        action = compile_action(endpoint.action)
        store = SecretStore(session, self.keyring, self.settings)
        secrets = await store.load_for_run(set(action.reads))
        return PreparedRun(service, endpoint, action.nodes, action.targets, secrets)

    @staticmethod
    def _preflight(prepared: PreparedRun, actor: Actor, force: bool) -> None:
        """Refuse the run before any node runs if a write target could not be stored."""
        for path, name in prepared.targets:
            if not actor.can(secret_update_from_service(name)):
                raise PermissionDenied(
                    f"{path}: writing secret {name!r} needs the permission "
                    f"{secret_update_from_service(name)!r}; nothing was called",
                    permission=secret_update_from_service(name),
                    secret=name,
                )
            loaded = prepared.secrets.get(name)
            if loaded is None:
                raise Conflict(
                    f"{path}: secret {name!r} does not exist; create it first", secret=name
                )
            why = why_runs_cannot_write(
                environment_specific=loaded.secret.environment_specific,
                locked=loaded.secret.locked,
            )
            if why is Unwritable.LOCKED:
                raise SecretLocked(
                    f"{path}: secret {name!r} {why}; runs never write it", secret=name
                )
            if why is Unwritable.NOT_ENVIRONMENT_SPECIFIC:
                raise SecretNotEnvironmentSpecific(
                    f"{path}: secret {name!r} {why}; runs only write environment-specific secrets",
                    secret=name,
                )
        for name in sorted(prepared.target_names):
            loaded = prepared.secrets.get(name)
            if not force and loaded is not None and loaded.secret.status == "needs_reauth":
                raise NeedsReauth(
                    f"secret {name!r} needs re-authorization: the token endpoint refused its "
                    "grant (invalid_grant). Set a new value by hand (for example the refresh "
                    "token, with PUT /v1/secrets/NAME/value), or call again with ?force=true; "
                    "nothing was called",
                    secret=name,
                )

    # --- running -------------------------------------------------------------------------------

    async def _run(self, prepared: PreparedRun, job: Job) -> RunOutcome:
        """One run: check, walk the action, store the outcome."""
        actor = job.actor
        run_id = job.run_id or str(uuid.uuid4())
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
            request=job.request or RequestData(),
            clock=self.clock,
            deadline=time.monotonic() + self.settings.run_deadline_seconds,
        )
        for value in secret_values.values():
            ctx.redactor.add(value)
        error: TokenfarmError | None = None
        try:
            self._preflight(prepared, actor, job.force)
            await execute(prepared.nodes, ctx)
        except TokenfarmError as exc:
            error = exc
        except Exception as exc:
            # Only the class name: an exception message may quote a value.
            logger.error(
                "run %s of %s/%s crashed: %s",
                run_id,
                prepared.service.slug,
                prepared.endpoint.readable_id,
                type(exc).__name__,
            )
            error = InternalError(
                f"the run failed unexpectedly ({type(exc).__name__}); see the server log"
            )
        record = RunRecord(prepared, ctx, job.trigger, started_at, started, job.schedule_name)
        outcome = await self._finish(record, error)
        self._announce(record, outcome)
        logger.info(
            "run %s of %s/%s by %s (%s): %s in %.1f ms%s",
            run_id,
            prepared.service.slug,
            prepared.endpoint.readable_id,
            actor.label,
            job.trigger,
            outcome.status,
            (time.perf_counter() - started) * 1000,
            f" [{outcome.error_body['type']}]" if outcome.error_body else "",
        )
        return outcome

    def _announce(self, record: RunRecord, outcome: RunOutcome) -> None:
        """Tell listeners (metrics, notifications) how the run went, after it is stored (the
        secrets' status changes are announced by the transaction that stored them)."""
        if self.events is None:
            return
        if outcome.run_id == record.ctx.run_id and not outcome.adopted:
            error = outcome.error_body or {}
            self.events.emit(
                RunFinished(
                    service=record.prepared.service.slug,
                    endpoint=record.prepared.endpoint.readable_id,
                    trigger=record.trigger,
                    status=outcome.status,
                    error_type=error.get("type"),
                    error_class=error.get("error_class"),
                    duration_seconds=time.perf_counter() - record.started,
                    run_id=outcome.run_id,
                )
            )

    # --- storing -------------------------------------------------------------------------------

    async def _finish(self, record: RunRecord, error: TokenfarmError | None) -> RunOutcome:
        """Store the writes (all or none) with the run record, or record the failure."""
        ctx = record.ctx
        outcome = RunOutcome(run_id=ctx.run_id, status="succeeded", http_status=200)
        kept = False  # whether the encrypted writes are safely in the run row
        try:
            if error is None and ctx.writes:
                # First keep what the upstream answered, so that no rotated token is lost if
                # the process dies or the database fails before the writes are stored.
                async with self.session_factory() as session, session.begin():
                    connection = await session.connection()
                    await connection.run_sync(record.keep_op(outcome, self.keyring))
                kept = True
            if error is None:
                try:
                    outcome.response = ctx.redactor.value(ctx.result)
                    async with self.session_factory() as session, session.begin():
                        outcome.stored = await self._store_writes(session, record, outcome, kept)
                    return outcome
                except (TokenfarmError, SQLAlchemyError) as exc:
                    # The transaction rolled back: none of this run's writes stayed.
                    outcome.stored = {}
                    error = self._storing_failed(ctx.run_id, exc, kept)
            elif isinstance(error, UpstreamFailed) and error.oauth_error == "invalid_grant":
                adopted_or_error = await self._lost_race(record)
                if isinstance(adopted_or_error, RunOutcome):
                    return adopted_or_error
                error = adopted_or_error or error
            outcome.status, outcome.http_status, outcome.error = "failed", error.status_code, error
            outcome.error_body = ctx.redactor.value(error.to_body())
            async with self.session_factory() as session, session.begin():
                if isinstance(error, RunFailed):
                    # Only a failure of the refresh itself marks the secret: not a refused
                    # pre-flight (a caller without permission must not flag it) nor a lost
                    # compare-and-set (someone else wrote it).
                    await self._mark_targets_failed(session, record, error)
                await record.save(session, outcome, kept)
        except SQLAlchemyError as exc:
            logger.error("run %s: storing the outcome failed: %s", ctx.run_id, type(exc).__name__)
            failure = self._storing_failed(ctx.run_id, exc, kept)
            outcome = RunOutcome(
                run_id=ctx.run_id,
                status="failed",
                http_status=failure.status_code,
                error=failure,
                error_body=ctx.redactor.value(failure.to_body()),
            )
        return outcome

    @staticmethod
    def _storing_failed(run_id: str, exc: Exception, kept: bool) -> TokenfarmError:
        """The error of a run whose writes could not be stored, saying how to recover them: a
        new error (of the kind of a domain error caught, which stays its cause)."""
        if isinstance(exc, TokenfarmError):
            message, extra = exc.message, dict(exc.extra)
        else:
            message, extra = "the run's outcome could not be stored; nothing was written", {}
        if kept:
            message += (
                f"; the upstream's answer is kept encrypted in run {run_id}: write it with "
                f"`tokenfarm runs recover {run_id}` or POST /v1/runs/{run_id}/recover"
            )
            extra["recoverable"] = True
        if not isinstance(exc, TokenfarmError):
            return StorageFailed(message, **extra)
        # A copy that keeps the kind's own attributes (status, error class), with the message.
        error = type(exc).__new__(type(exc), message)
        error.__dict__.update(exc.__dict__, message=message, extra=extra)
        error.__cause__ = exc
        return error

    async def _lost_race(self, record: RunRecord) -> RunOutcome | TokenfarmError | None:
        """After `invalid_grant`: did a secret the run read change since it began?

        Then the grant was spent or replaced by someone else, not revoked: adopt the result of a
        run that refreshed the targets meanwhile, else report the race without marking anything.
        None: nothing changed, the grant really was refused.
        """
        prepared = record.prepared
        async with self.session_factory() as session:
            store = SecretStore(session, self.keyring, self.settings)
            now = await store.load_for_run(set(prepared.secrets))
        changed = changed_versions(prepared.secrets, now, set(prepared.secrets))
        if not changed:
            return None
        adopted = await adopt(self.session_factory, prepared, now)
        if adopted is not None:
            return adopted
        return Superseded(
            f"{', '.join(sorted(changed))} changed while the run was in flight and the token "
            "endpoint refused the grant the run began with (invalid_grant); try again",
            secrets=sorted(changed),
        )

    async def _store_writes(
        self, session: AsyncSession, record: RunRecord, outcome: RunOutcome, kept: bool
    ) -> dict[str, ValueWritten]:
        """Write every pending secret compare-and-set on the version the run started from, and
        record the run as succeeded (or forget its kept answer if it isn't logged): in one
        transaction and one greenlet, on Core statements, since every refresh passes here.

        VersionConflict if a value changed during the run, NotFound if a secret was deleted
        meanwhile (nothing is written then).
        """
        ctx = record.ctx
        written = sorted(ctx.writes)
        now = utcnow()
        loaded_writes: list[LoadedSecret] = []
        writes: list[ValueWrite] = []
        for name, write in ctx.writes.items():
            loaded = record.prepared.secrets[name]
            assert loaded is not None  # the pre-flight check guarantees it
            loaded_writes.append(loaded)
            writes.append(
                ValueWrite.of_run(
                    loaded,
                    self.keyring.encrypt(write.value),
                    checked_value(write.value, write.expires_at),
                    run_id=ctx.run_id,
                    actor=ctx.actor.label,
                    now=now,
                    versions_kept=self.settings.versions_kept,
                )
            )
        connection = await session.connection()
        try:
            refused = await connection.run_sync(
                _store_run, writes, now, record.stored_op(outcome, kept, written)
            )
        except IntegrityError:
            # A first value another writer inserted meanwhile (one row per secret/environment).
            raise VersionConflict(
                "a secret the run writes was written concurrently; nothing was written"
            ) from None
        if refused is not None:
            index, gone = refused
            store = SecretStore(session, self.keyring, self.settings)
            raise await store.run_write_refused(loaded_writes[index], gone)
        for loaded in sorted(loaded_writes, key=lambda loaded: loaded.secret.name):
            health.announce_healthy(
                session, loaded.secret.name, loaded.secret.status, ctx.run_id, utcnow()
            )
        return {
            loaded.secret.name: write.written(loaded.secret.name)
            for loaded, write in zip(loaded_writes, writes, strict=True)
        }

    async def _mark_targets_failed(
        self, session: AsyncSession, record: RunRecord, error: RunFailed
    ) -> None:
        """Note the failure on every secret the run meant to write (its value stays as it was)."""
        prepared = record.prepared
        store = SecretStore(session, self.keyring, self.settings)
        revoked = isinstance(error, UpstreamFailed) and error.oauth_error == "invalid_grant"
        summary = health.failure_summary(error.error_type, error.error_class, error.message)
        for name in sorted(prepared.target_names):
            loaded = prepared.secrets.get(name)
            if loaded is None or why_runs_cannot_write(
                environment_specific=loaded.secret.environment_specific,
                locked=loaded.secret.locked,
            ):
                continue
            health.mark_failed(
                session, await store.get(name), summary, revoked=revoked, run_id=record.ctx.run_id
            )


def _store_run(
    connection: Connection,
    writes: list[ValueWrite],
    now: datetime,
    record: Callable[[Connection], None] | None,
) -> tuple[int, bool] | None:
    """The storing transaction's statements, in order, in one greenlet: the secrets' (each
    write planned on its secret row as it is now, then stored compare-and-set with its
    history), then the run record's. None when all is stored; else (index of the first write
    refused, whether its secret is gone): the caller rolls the transaction back."""
    gone = sql.plan_run_writes(connection, writes, now)
    if gone is not None:
        return gone, True
    refused = sql.store_values(connection, writes)
    if refused is not None:
        return refused, False
    if record is not None:
        record(connection)
    return None
