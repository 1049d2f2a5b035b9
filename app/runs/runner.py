"""The run service: load an endpoint and its secrets, check every write target, walk the action,
then store every write at once (compare-and-set) and record the run.

No database transaction holding data stays open across an outbound call: loading and storing are
short transactions around the engine. Runs of one endpoint are single-flight: concurrent callers
without request data share one execution (in this process). A run takes turns with every other run
of its endpoint and every run that writes one of the same secrets (two endpoints refreshing one
refresh token would otherwise both spend it): in this process with asyncio locks, and on
PostgreSQL with transaction-scoped advisory locks, held on a connection of their own, so replicas
take turns too. A run that waited and finds its targets already refreshed by another run adopts
that result instead of calling the upstream again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlmodel import col

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
)
from app.events import Events, RunFinished, SecretStatusChanged, emit_after_commit
from app.outbound import Outbound
from app.pipeline.analysis import compile_action
from app.pipeline.context import RequestData, RunContext
from app.pipeline.engine import execute
from app.runs.models import Run, RunSecret
from app.secrets.models import SecretVersion
from app.secrets.schemas import ValueWritten
from app.secrets.store import LoadedSecret, SecretStore
from app.services.store import EndpointState, ServiceState, ServiceStore

logger = logging.getLogger("tokenfarm.run")
RUN_TABLE = Run.__table__  # type: ignore[attr-defined]
RUN_SECRET_TABLE = RunSecret.__table__  # type: ignore[attr-defined]


def storable(message: str | None) -> str | None:
    """Text every database stores: messages quote upstream answers, and PostgreSQL refuses NUL."""
    return None if message is None else message.replace("\x00", "\ufffd")


@dataclass
class RunOutcome:
    """What a run ended with, already redacted.

    `adopted`: nothing was called because another run (on another replica) had just refreshed
    the targets; `coalesced`: this caller shared a run another caller started.
    """

    run_id: str
    status: str
    http_status: int
    error: TokenfarmError | None = None
    error_body: dict[str, Any] | None = None
    response: Any = None
    # What the run stored, by secret: the new version and expiry (never the value).
    stored: dict[str, ValueWritten] = field(default_factory=dict)
    adopted: bool = False
    coalesced: bool = False

    @property
    def written(self) -> list[str]:
        """The secrets the run wrote."""
        return list(self.stored)


@dataclass
class Turn:
    """The lock of one endpoint and how many runs hold or await it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


@dataclass
class Flight:
    """A run that concurrent callers share; `targets` is known once its endpoint is loaded."""

    task: asyncio.Task[RunOutcome] | None = None
    targets: set[str] | None = None
    loaded: asyncio.Event = field(default_factory=asyncio.Event)
    landed_at: float | None = None  # time.monotonic() when the run ended

    def admits(self, actor: Actor) -> bool:
        """A caller may share the run only if it could have written every target itself."""
        return self.targets is not None and actor.can_write_all(self.targets)


@dataclass
class PreparedRun:
    """An endpoint loaded for a run, with the secrets it reads and writes."""

    service: ServiceState
    endpoint: EndpointState
    nodes: Sequence[Any]
    targets: Sequence[tuple[str, str]]
    secrets: dict[str, LoadedSecret | None]

    @property
    def target_names(self) -> set[str]:
        """The secrets the action may write."""
        return {name for _, name in self.targets}


@dataclass
class RefreshTarget:
    """The endpoint a secret's refresh runs; `prepared` is None when a run of it was there to
    share (if it is gone by the time the caller asks, `run_endpoint` loads it itself)."""

    slug: str
    readable_id: str
    prepared: PreparedRun | None


def endpoint_turn(slug: str, readable_id: str) -> str:
    """The name of the turn every run of one endpoint takes."""
    return f"tokenfarm/run/{slug}/{readable_id}"


def secret_turn(name: str, environment: str) -> str:
    """The name of the turn every run writing one secret (in one environment) takes."""
    return f"tokenfarm/secret/{environment}/{name}"


def advisory_key(turn: str) -> int:
    """A stable signed 64-bit key for PostgreSQL's advisory locks, one per turn."""
    digest = hashlib.blake2b(turn.encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


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
        # PostgreSQL only: a pool of its own for the advisory locks, so that runs waiting for
        # their turn never starve the short data transactions of a connection.
        self.lock_engine = lock_engine
        # Two concurrent refreshes would both spend the same rotating refresh token, and the
        # reuse revokes its whole family: runs of one endpoint take turns, and callers without
        # request data share the run in flight.
        self._turns: dict[str, Turn] = {}
        self._flights: dict[tuple[str, str, bool], Flight] = {}
        # The last flight of each endpoint that landed, for callers that arrived during it.
        self._landed: dict[tuple[str, str, bool], Flight] = {}
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
        flight = self._shared_flight(key, received_at)
        if flight is not None and flight.task is not None:
            await flight.loaded.wait()
            if flight.admits(actor) or flight.targets is None:
                outcome = await asyncio.shield(flight.task)
                return replace(outcome, coalesced=True)
            # It lacks a permission the run needs: it runs (and is refused) on its own.
            return await self._detached(self._in_turn(slug, readable_id, job, None))
        flight = Flight()
        self._flights[key] = flight

        def landed(_: asyncio.Task[RunOutcome]) -> None:
            flight.loaded.set()
            flight.landed_at = time.monotonic()
            if self._flights.get(key) is flight:
                del self._flights[key]
            self._landed[key] = flight
            # Forget flights that landed long ago: every request that arrived before they did
            # has been served by now (a request waits at most about a run's deadline).
            horizon = flight.landed_at - self.settings.run_deadline_seconds
            for old_key, old in list(self._landed.items()):
                if old.landed_at is not None and old.landed_at < horizon:
                    del self._landed[old_key]

        task = self._spawn(self._in_turn(slug, readable_id, job, flight))
        flight.task = task
        task.add_done_callback(landed)
        return await asyncio.shield(task)

    def _shared_flight(
        self, key: tuple[str, str, bool], received_at: float | None
    ) -> Flight | None:
        """The run a caller without request data shares: the one in flight, else the last one
        if it landed after the caller's request arrived (a burst queues in the server)."""
        flight = self._flights.get(key)
        if flight is None and received_at is not None:
            last = self._landed.get(key)
            if last is not None and last.landed_at is not None and received_at < last.landed_at:
                flight = last
        return flight

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

    def _turns_of(self, slug: str, readable_id: str, targets: set[str]) -> list[str]:
        """The turns a run takes, in the one order every run takes them (no deadlock)."""
        environment = self.settings.environment
        turns = {endpoint_turn(slug, readable_id)}
        turns.update(secret_turn(name, environment) for name in targets)
        return sorted(turns)

    @asynccontextmanager
    async def _turn(self, turns: list[str]) -> AsyncIterator[bool]:
        """Wait for the earlier runs sharing a turn in this process (yields whether it had to)."""
        counted: list[str] = []
        acquired: list[asyncio.Lock] = []
        waited = False
        try:
            for name in turns:
                turn = self._turns.setdefault(name, Turn())
                turn.users += 1
                counted.append(name)
                waited = waited or turn.lock.locked()
                await turn.lock.acquire()
                acquired.append(turn.lock)
            yield waited
        finally:
            for lock in reversed(acquired):
                lock.release()
            for name in counted:
                turn = self._turns[name]
                turn.users -= 1
                if not turn.users:
                    del self._turns[name]

    @asynccontextmanager
    async def _replicas_turn(self, turns: list[str]) -> AsyncIterator[bool]:
        """On PostgreSQL, hold the turns' advisory locks (yields whether they are held)."""
        if self.lock_engine is None:
            yield False
            return
        keys = [advisory_key(name) for name in turns]
        try:
            async with self.lock_engine.connect() as connection, connection.begin():
                # Every lock in one statement, in the turns' order (no deadlock): the function
                # runs once per row, after the ordering. The pool's connections carry the
                # lock_timeout (app/db.py `create_lock_engine`).
                await connection.execute(_TAKE_TURNS, {"keys": keys})
                yield True
        except DBAPIError as exc:
            if (
                "lock timeout" in str(exc.orig).lower()
                or "LockNotAvailable" in type(exc.orig).__name__
            ):
                raise Conflict(
                    f"{turns[0].removeprefix('tokenfarm/run/')} or a run writing the same "
                    f"secrets is still running on another replica after "
                    f"{self.settings.run_deadline_seconds:g} s; try again later"
                ) from None
            raise

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
            turns = self._turns_of(slug, readable_id, snapshot.target_names)
            async with self._turn(turns) as waited, self._replicas_turn(turns) as locked:
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
                        await self._adopt(snapshot, prepared.secrets)
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
            if self._shared_flight((slug, readable_id, force), received_at) is not None:
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

    async def _adopt(
        self, snapshot: PreparedRun, now: dict[str, LoadedSecret | None]
    ) -> RunOutcome | None:
        """The result of a run that refreshed the targets since `snapshot` was loaded, if any.

        Only a run's write counts: a value set by hand meanwhile is not a refresh.
        """
        changed = _changed(snapshot.secrets, now, snapshot.target_names)
        if not changed:
            return None
        async with self.session_factory() as session:
            for name in sorted(changed):
                loaded = now[name]
                if loaded is None:
                    continue
                row = (
                    await session.execute(
                        select(col(SecretVersion.source), col(SecretVersion.run_id)).where(
                            col(SecretVersion.secret_id) == loaded.secret.id,
                            col(SecretVersion.environment) == loaded.environment,
                            col(SecretVersion.version) == loaded.version,
                        )
                    )
                ).one_or_none()
                if row is not None and row.source == "run" and row.run_id:
                    logger.info(
                        "run of %s/%s adopted run %s: %s was refreshed meanwhile",
                        snapshot.service.slug,
                        snapshot.endpoint.readable_id,
                        row.run_id,
                        name,
                    )
                    return RunOutcome(
                        run_id=row.run_id, status="succeeded", http_status=200, adopted=True
                    )
        return None

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
                    row = self._run_row(record, outcome, "storing", recovery=True)
                    names = sorted(record.prepared.target_names)
                    connection = await session.connection()
                    await connection.run_sync(_write_run, row, {}, names, kept=False, written=[])
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
                await self._save_record(session, record, outcome, kept)
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
        """The error of a run whose writes could not be stored, saying how to recover them."""
        if isinstance(exc, TokenfarmError):
            error = exc
        else:
            error = StorageFailed("the run's outcome could not be stored; nothing was written")
        if kept:
            error.message += (
                f"; the upstream's answer is kept encrypted in run {run_id}: write it with "
                f"`tokenfarm runs recover {run_id}` or POST /v1/runs/{run_id}/recover"
            )
            error.extra["recoverable"] = True
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
        changed = _changed(prepared.secrets, now, set(prepared.secrets))
        if not changed:
            return None
        adopted = await self._adopt(prepared, now)
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
        record the run as succeeded (or forget its kept answer if it isn't logged)."""
        ctx = record.ctx
        written = sorted(ctx.writes)
        then: Callable[[Connection], None] | None = None
        if record.logged:
            then = self._record_op(record, outcome, kept, written)
        elif kept:
            then = partial(_drop_run, run_id=ctx.run_id)
        writes = []
        for name, write in ctx.writes.items():
            loaded = record.prepared.secrets[name]
            assert loaded is not None  # the pre-flight check guarantees it
            writes.append((loaded, write.value, write.expires_at))
        store = SecretStore(session, self.keyring, self.settings)
        stored = await store.store_run_writes(
            writes, actor=ctx.actor.label, run_id=ctx.run_id, then=then
        )
        for name in written:
            loaded = record.prepared.secrets[name]
            assert loaded is not None
            if loaded.secret.status != "ok":
                emit_after_commit(
                    session,
                    SecretStatusChanged(
                        name, loaded.secret.status, "ok", 0, None, ctx.run_id, utcnow()
                    ),
                )
        return stored

    async def _mark_targets_failed(
        self, session: AsyncSession, record: RunRecord, error: RunFailed
    ) -> None:
        """Note the failure on every secret the run meant to write (its value stays as it was).

        `invalid_grant` means a person must authorize again: `needs_reauth` stops further runs
        until a value is set by hand. Anything else is `failing`, with a count.
        """
        prepared = record.prepared
        store = SecretStore(session, self.keyring, self.settings)
        revoked = isinstance(error, UpstreamFailed) and error.oauth_error == "invalid_grant"
        summary = f"{error.error_type} ({error.error_class}): {error.message}"
        for name in sorted(prepared.target_names):
            loaded = prepared.secrets.get(name)
            if loaded is None or loaded.secret.locked or not loaded.secret.environment_specific:
                continue
            secret = await store.get(name)
            old = secret.status
            if revoked:
                secret.status = "needs_reauth"
            elif secret.status != "needs_reauth":
                secret.status = "failing"
            secret.failure_count += 1
            secret.last_error = storable(summary[:2000])
            if secret.status != old:
                emit_after_commit(
                    session,
                    SecretStatusChanged(
                        name,
                        old,
                        secret.status,
                        secret.failure_count,
                        secret.last_error,
                        record.ctx.run_id,
                        utcnow(),
                    ),
                )

    def _run_row(
        self, record: RunRecord, outcome: RunOutcome, status: str, *, recovery: bool = False
    ) -> dict[str, Any]:
        """The run row as it is first inserted."""
        return {
            "id": record.ctx.run_id,
            "service_slug": record.prepared.service.slug,
            "endpoint_readable_id": record.prepared.endpoint.readable_id,
            "trigger": record.trigger,
            "schedule_name": record.schedule_name,
            "actor": record.ctx.actor.label,
            "status": status,
            "http_status": outcome.http_status,
            "started_at": record.started_at,
            "trace": [],
            "recovery": self._recovery(record) if recovery else None,
        }

    def _recovery(self, record: RunRecord) -> str:
        """The pending writes, encrypted like every value, with the versions they replace."""
        writes = []
        for name, write in record.ctx.writes.items():
            loaded = record.prepared.secrets[name]
            assert loaded is not None
            writes.append(
                {
                    "secret": name,
                    "environment": loaded.environment,
                    "value": write.value,
                    "expires_at": write.expires_at.isoformat() if write.expires_at else None,
                    "base_version": loaded.version,
                }
            )
        return self.keyring.encrypt({"writes": writes})

    def _record_op(
        self, record: RunRecord, outcome: RunOutcome, kept: bool, written: list[str]
    ) -> Callable[[Connection], None]:
        """What completes the run row (inserted now, or kept since the upstream answered), for
        a connection: the run row as first inserted and the columns that complete it."""
        ctx = record.ctx
        error = outcome.error_body or {}
        completed: dict[str, Any] = {
            "status": outcome.status,
            "http_status": outcome.http_status,
            "error_type": storable(error.get("type")),
            "error_class": error.get("error_class"),
            "error_message": storable(error.get("message")),
            "finished_at": utcnow(),
            "duration_ms": round((time.perf_counter() - record.started) * 1000, 2),
            "trace": ctx.redactor.value(ctx.trace),
        }
        if kept and outcome.status == "succeeded":
            completed["recovery"] = None
        return partial(
            _write_run,
            row=self._run_row(record, outcome, outcome.status),
            completed=completed,
            names=sorted(record.prepared.target_names),
            kept=kept,
            written=written,
        )

    async def _save_record(
        self, session: AsyncSession, record: RunRecord, outcome: RunOutcome, kept: bool
    ) -> None:
        """Complete the run row (inserted now, or kept since the upstream answered)."""
        connection = await session.connection()
        await connection.run_sync(self._record_op(record, outcome, kept, sorted(outcome.written)))


# Built once: building and keying a statement costs several times what executing it does.
_TAKE_TURNS = text(
    "SELECT pg_advisory_xact_lock(t.key) "
    "FROM unnest(CAST(:keys AS bigint[])) WITH ORDINALITY AS t(key, n) ORDER BY t.n"
)
_INSERT_RUN = insert(RUN_TABLE)
_COMPLETE_RUN = update(RUN_TABLE).where(RUN_TABLE.c.id == bindparam("w_id"))
_DROP_RUN = delete(RUN_TABLE).where(RUN_TABLE.c.id == bindparam("w_id"))
_INSERT_RUN_SECRET = insert(RUN_SECRET_TABLE)
_MARK_WRITTEN = (
    update(RUN_SECRET_TABLE)
    .where(
        RUN_SECRET_TABLE.c.run_id == bindparam("w_run_id"),
        RUN_SECRET_TABLE.c.secret_name.in_(bindparam("w_names", expanding=True)),
    )
    .values(written=True)
)


def _drop_run(connection: Connection, run_id: str) -> None:
    """Forget the kept answer of a stored run that isn't logged (enable_log is off)."""
    connection.execute(_DROP_RUN, {"w_id": run_id})


def _write_run(
    connection: Connection,
    row: dict[str, Any],
    completed: dict[str, Any],
    names: list[str],
    *,
    kept: bool,
    written: list[str],
) -> None:
    """Insert the run row and the secrets it targeted, or complete the row kept since the
    upstream answered (`kept`, inserted if it is gone), then mark the secrets written.

    Core statements in one greenlet: every refresh passes here, and the unit of work or an
    awaited call per statement would cost more than the statements.
    """
    run_id = row["id"]
    if not kept or connection.execute(_COMPLETE_RUN, {"w_id": run_id, **completed}).rowcount != 1:
        connection.execute(_INSERT_RUN, {**row, **completed})
        if names:
            connection.execute(
                _INSERT_RUN_SECRET,
                [{"run_id": run_id, "secret_name": name, "written": False} for name in names],
            )
    if written:
        connection.execute(_MARK_WRITTEN, {"w_run_id": run_id, "w_names": written})


@dataclass
class RunRecord:
    """What recording a run needs besides its outcome."""

    prepared: PreparedRun
    ctx: RunContext
    trigger: str
    started_at: datetime
    started: float
    schedule_name: str | None = None

    @property
    def logged(self) -> bool:
        """Whether a successful run is recorded: with enable_log, and every schedule's tick."""
        return self.prepared.endpoint.enable_log or self.schedule_name is not None


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


def _changed(
    before: dict[str, LoadedSecret | None], after: dict[str, LoadedSecret | None], names: set[str]
) -> set[str]:
    """Which of `names` hold another version now than before."""
    changed = set()
    for name in names:
        old, new = before.get(name), after.get(name)
        old_version = old.version if old else None
        new_version = new.version if new else None
        if old_version != new_version:
            changed.add(name)
    return changed
