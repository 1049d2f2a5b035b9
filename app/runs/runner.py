"""The run service: load an endpoint and its secrets, check every write target, walk the action,
then store every write at once (compare-and-set) and record the run.

No database transaction holding data stays open across an outbound call: loading and storing are
short transactions around the engine. Runs of one endpoint are single-flight: concurrent callers
without request data share one execution (in this process), and a run takes turns with every run
of its endpoint or of one of its secrets, across replicas too (app/runs/flights.py). A run that
waited and finds its targets already refreshed by another run adopts that result instead of
calling the upstream again. The checks before any node runs are app/runs/preflight.py; the
transaction that stores a run (the secrets' statements, then the run record's) is
app/runs/storing.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.auth.actor import Actor
from app.config import Settings
from app.crypto import Keyring
from app.db import utcnow
from app.errors import (
    AnswerPending,
    Conflict,
    DatabaseUnavailable,
    InternalError,
    MethodNotAllowed,
    StorageFailed,
    TokenfarmError,
    is_database_failure,
    is_database_outage,
)
from app.events import Events, RunFinished
from app.outbound import Outbound
from app.pipeline.analysis import compile_action
from app.pipeline.context import RequestData, RunContext
from app.pipeline.engine import execute
from app.runs.flights import Flight, Flights, Turns, adopt, secret_turn, turns_of
from app.runs.preflight import preflight
from app.runs.record import PreparedRun, RunOutcome, RunRecord
from app.runs.storing import RunStorage
from app.secrets.store import SecretStore
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
        self.storage = RunStorage(session_factory, keyring, settings)
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
                # A kept answer not yet written rotated a target: write it first (then load
                # again), so that this run never presents the grant that answer replaced.
                wrote = await self._write_pending(snapshot.target_names)
                # Also when the replay task wrote one since the snapshot was loaded.
                wrote = wrote or snapshot.replays_seen != self.storage.replays
                prepared = snapshot
                if waited or locked or wrote:
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
        except Exception as exc:
            if not is_database_failure(exc):
                raise
            outage = is_database_outage(exc)
            logger.error(
                "run of %s/%s: the database failed: %s", slug, readable_id, type(exc).__name__
            )
            failure: TokenfarmError = (
                DatabaseUnavailable(
                    "the database is unavailable right now; nothing was called: try again shortly"
                )
                if outage
                else StorageFailed("the database could not be reached; nothing was called")
            )
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

    # --- loading ----------------------------------------------------------------

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
        replays_seen = self.storage.replays  # before reading: a replay may write meanwhile
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
        return PreparedRun(
            service, endpoint, action.nodes, action.targets, secrets, replays_seen=replays_seen
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
        ctx.allowed_destinations = {
            name: loaded.secret.allowed_destinations
            for name, loaded in prepared.secrets.items()
            if loaded is not None and loaded.secret.allowed_destinations is not None
        }
        record = RunRecord(prepared, ctx, job.trigger, started_at, started, job.schedule_name)
        if prepared.target_names:
            # Every answer it accepts is kept durably as it arrives (app/runs/storing.py).
            ctx.answer_sink = partial(self.storage.keep_answer, record)
        error: TokenfarmError | None = None
        self.storage.in_flight.add(run_id)
        try:
            preflight(prepared, actor, job.force)
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
        try:
            outcome = await self.storage.finish(record, error)
        finally:
            self.storage.in_flight.discard(run_id)
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

    async def replay_kept_answers(self) -> None:
        """Write the kept answers that wait (the runtime's replay task does, while they do) in
        the turns of the secrets they write, here and across replicas: no run of those secrets
        loads or calls anything meanwhile (it would present the grant an answer replaced)."""
        from app.runs.recovery import replay_pending

        environment = self.settings.environment
        turns = sorted(secret_turn(name, environment) for name in self.storage.pending_targets())
        if not turns:
            return
        async with (
            self.turns.in_process(turns),
            self.turns.across_replicas(turns, self.settings.run_deadline_seconds),
        ):
            await replay_pending(self.storage, actor="system:replay")

    async def _write_pending(self, targets: set[str]) -> bool:
        """Before calling anything: write the kept answers (spooled during a database outage,
        or left by a process that died) that rotated a target (True: some were), or refuse: this
        run would present the refresh token such an answer replaced, and the upstream may revoke
        the grant."""
        waiting = self.storage.pending(targets) if targets else []
        if not waiting:
            return False
        # Imported here: recovering is rare, and app/runs/recovery.py imports the engine.
        from app.runs.recovery import replay_pending

        try:
            await replay_pending(self.storage, actor="system:replay", only=waiting)
        except Exception as exc:
            if not is_database_failure(exc):
                raise
        still = self.storage.pending(targets)
        if not still:
            return True
        raise AnswerPending(
            f"run {still[0]} kept an answer that rotated {', '.join(sorted(targets))} and "
            "it is not written yet (the database is unavailable, or that run may still be in "
            "flight); nothing was called: try again shortly",
            runs=still,
        )

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
