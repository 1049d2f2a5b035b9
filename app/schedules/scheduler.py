"""The scheduler: runs due schedule ticks and refreshes secrets before they expire.

Any number of scheduler processes may share one database. Each due item is *claimed* by exactly
one of them with a compare-and-set update (on PostgreSQL the candidates are picked with
`FOR UPDATE SKIP LOCKED`, so replicas don't even contend), and the claim lasts a lease. A
schedule's claim moves `next_run_at` to the next tick after *now*, so a service that was down
runs a missed schedule once, not once per missed tick. A replica that dies leaves its claims to
expire: one it had not started is run by whoever takes it over; one it had started is recorded
as `interrupted` and not run again (the upstream may already have been called, and a token
endpoint must not be asked twice for the same tick).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from app.auth.accounts import AccountStore
from app.auth.permissions import service_run_wanted
from app.clock import Clock
from app.config import Settings
from app.errors import TokenfarmError
from app.events import Events, SchedulerLag
from app.runs.models import Run
from app.runs.record import unrun
from app.runs.runner import Runner, RunOutcome
from app.schedules.cron import next_fire
from app.schedules.models import Schedule
from app.secrets import health
from app.secrets.expiry import backoff_after_failure
from app.secrets.models import Secret, SecretValue

logger = logging.getLogger("tokenfarm.scheduler")


@dataclass(frozen=True)
class ScheduleJob:
    """A claimed tick of a schedule."""

    schedule_id: int
    name: str
    slug: str
    readable_id: str
    run_as: str
    run_id: str


@dataclass(frozen=True)
class RefreshJob:
    """A claimed expiry-driven refresh of one secret value."""

    value_id: int
    secret: str
    refresh_endpoint: str
    refresh_as: str


def replica_name() -> str:
    """Who holds a claim: host, process and a random suffix (unique per process start)."""
    return f"{socket.gethostname()[:32]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Scheduler:
    """Claims due work and runs it through the runner, at most `concurrency` at a time."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        runner: Runner,
        settings: Settings,
        clock: Clock,
        name: str | None = None,
        events: Events | None = None,
    ) -> None:
        self.events = events
        self.session_factory = session_factory
        self.runner = runner
        self.settings = settings
        self.clock = clock
        self.name = name or replica_name()
        self._postgres = session_factory.kw["bind"].dialect.name == "postgresql"
        self._slots = asyncio.Semaphore(settings.scheduler_concurrency)
        self._running: set[asyncio.Task[None]] = set()
        # Set when a run ends: the loop claims more at once instead of sleeping out the poll,
        # so throughput is bounded by concurrency / run time, not concurrency / poll interval.
        self._freed = asyncio.Event()

    # --- the loop -------------------------------------------------------------------------------

    async def serve(self, stop: asyncio.Event) -> None:
        """Poll for due work until `stop` is set, then let the runs in flight finish."""
        logger.info("scheduler %s started", self.name)
        while not stop.is_set():
            try:
                await self.start_due()
            except SQLAlchemyError as exc:
                # The database may be restarting: try again at the next poll.
                logger.warning("scheduler %s: the database failed: %s", self.name, type(exc))
            sleeper = asyncio.ensure_future(self.clock.sleep(self.settings.scheduler_poll_seconds))
            stopper = asyncio.ensure_future(stop.wait())
            freed = asyncio.ensure_future(self._freed.wait())
            await asyncio.wait({sleeper, stopper, freed}, return_when=asyncio.FIRST_COMPLETED)
            for waiter in (sleeper, stopper, freed):
                waiter.cancel()
            self._freed.clear()
        await self.drain()
        logger.info("scheduler %s stopped", self.name)

    async def start_due(self) -> int:
        """Claim as much due work as there are free slots and start it; answers how much."""
        free = self.settings.scheduler_concurrency - len(self._running)
        if free <= 0:
            return 0
        now = self.clock.now()
        jobs: list[ScheduleJob | RefreshJob] = []
        jobs.extend(await self._claim_schedules(now, free))
        if len(jobs) < free:
            jobs.extend(await self._claim_refreshes(now, free - len(jobs)))
        for job in jobs:
            task = asyncio.ensure_future(self._guarded(job))
            self._running.add(task)
            task.add_done_callback(self._ended)
        return len(jobs)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._freed.set()

    async def run_due(self) -> int:
        """Start everything due and wait for it (one pass; what tests and benchmarks drive)."""
        started = total = await self.start_due()
        while started:
            await self.drain()
            started = await self.start_due()
            total += started
        return total

    async def drain(self) -> None:
        """Wait for the runs in flight."""
        if self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)

    async def _guarded(self, job: ScheduleJob | RefreshJob) -> None:
        async with self._slots:
            try:
                if isinstance(job, ScheduleJob):
                    await self._run_schedule(job)
                else:
                    await self._run_refresh(job)
            except Exception as exc:
                # The claim runs out and another pass (or replica) deals with it.
                logger.error("scheduler %s: %r failed: %s", self.name, job, type(exc).__name__)

    def _lag(self, kind: str, now: datetime, due_at: datetime | None) -> None:
        """Report how late due work is being started."""
        if self.events is not None and due_at is not None:
            self.events.emit(SchedulerLag(kind, max(0.0, (now - due_at).total_seconds())))

    # --- schedules ------------------------------------------------------------------------------

    def _environment_filter(self) -> Any:
        env = self.settings.environment
        return or_(
            col(Schedule.environments).is_(None), col(Schedule.environments).like(f"%,{env},%")
        )

    async def _claim_schedules(self, now: datetime, limit: int) -> list[ScheduleJob]:
        """Claim due ticks, and deal with claims whose replica went away."""
        lease = now + timedelta(seconds=self.settings.lease_seconds)
        due = or_(
            and_(col(Schedule.claimed_by).is_(None), col(Schedule.next_run_at) <= now),
            and_(col(Schedule.claimed_by).is_not(None), col(Schedule.claim_expires_at) < now),
        )
        query = (
            select(Schedule)
            .where(col(Schedule.enabled).is_(True), self._environment_filter(), due)
            .order_by(col(Schedule.next_run_at))
            .limit(limit)
        )
        if self._postgres:
            query = query.with_for_update(skip_locked=True)
        jobs: list[ScheduleJob] = []
        async with self.session_factory() as session, session.begin():
            for row in (await session.execute(query)).scalars().all():
                if row.claimed_by is None:
                    assert row.next_run_at is not None
                    self._lag("schedule", now, row.next_run_at)
                    values: dict[str, Any] = {
                        "claimed_tick_at": row.next_run_at,
                        "claimed_run_id": str(uuid.uuid4()),
                        "next_run_at": next_fire(row.cron, row.timezone, now),
                        "run_started_at": None,
                    }
                    condition = and_(
                        col(Schedule.claimed_by).is_(None), col(Schedule.next_run_at) <= now
                    )
                elif row.run_started_at is None:
                    # Its replica went away before starting the run: this tick is ours now.
                    values = {}
                    condition = col(Schedule.claim_expires_at) < now
                else:
                    await self._interrupted(session, row, now)
                    continue
                claimed = await session.execute(
                    update(Schedule)
                    .where(col(Schedule.id) == row.id, condition)
                    .values(claimed_by=self.name, claim_expires_at=lease, **values)
                    .execution_options(synchronize_session=False)
                )
                if claimed.rowcount != 1:  # type: ignore[attr-defined]
                    continue  # another replica was faster (SQLite has no SKIP LOCKED)
                assert row.id is not None
                jobs.append(
                    ScheduleJob(
                        schedule_id=row.id,
                        name=row.name,
                        slug=row.service_slug,
                        readable_id=row.endpoint_readable_id,
                        run_as=row.run_as,
                        run_id=values.get("claimed_run_id") or row.claimed_run_id or "",
                    )
                )
        return jobs

    async def _interrupted(self, session: AsyncSession, row: Schedule, now: datetime) -> None:
        """A claimed tick whose replica started it and went away: record it, never rerun it."""
        run_id = row.claimed_run_id or str(uuid.uuid4())
        recorded = await session.get(Run, run_id)
        status = recorded.status if recorded is not None else "interrupted"
        if recorded is None:
            session.add(
                unrun(
                    run_id,
                    service_slug=row.service_slug,
                    endpoint_readable_id=row.endpoint_readable_id,
                    trigger="schedule",
                    schedule_name=row.name,
                    actor=f"service_account:{row.run_as}",
                    http_status=503,
                    error_type="interrupted",
                    message=(
                        f"the scheduler replica {row.claimed_by} started this tick and stopped "
                        "before it finished; it is not run again (the upstream may already have "
                        "been called). Check the endpoint's secrets."
                    ),
                    started_at=row.run_started_at or now,
                    finished_at=now,
                )
            )
        logger.warning("schedule %s: tick %s was interrupted", row.name, run_id)
        await session.execute(
            update(Schedule)
            .where(col(Schedule.id) == row.id, col(Schedule.claimed_run_id) == row.claimed_run_id)
            .values(
                last_run_at=row.claimed_tick_at,
                last_status=status,
                last_run_id=run_id,
                **_no_claim(),
            )
            .execution_options(synchronize_session=False)
        )

    async def _run_schedule(self, job: ScheduleJob) -> None:
        """Mark the tick started, run it as the schedule's account, record how it went."""
        async with self.session_factory() as session, session.begin():
            started = await session.execute(
                update(Schedule)
                .where(
                    col(Schedule.id) == job.schedule_id,
                    col(Schedule.claimed_run_id) == job.run_id,
                    col(Schedule.claimed_by) == self.name,
                )
                .values(run_started_at=self.clock.now())
                .execution_options(synchronize_session=False)
            )
            if started.rowcount != 1:  # type: ignore[attr-defined]
                return  # the claim ran out and someone else took the tick
            try:
                actor = await AccountStore(session).actor_for_service_account(job.run_as)
            except TokenfarmError:
                actor = None
        if actor is None:
            outcome = await self._record_refused(
                job, f"run_as: the service account {job.run_as!r} no longer exists"
            )
        elif not actor.can_run(job.slug, job.readable_id):
            outcome = await self._record_refused(
                job,
                f"run_as: the service account {job.run_as!r} lacks "
                f"{service_run_wanted(job.slug, job.readable_id)}; nothing was called",
            )
        else:
            try:
                outcome = await self.runner.run_endpoint(
                    job.slug,
                    job.readable_id,
                    actor=actor,
                    trigger="schedule",
                    run_id=job.run_id,
                    schedule_name=job.name,
                )
            except TokenfarmError as exc:  # the endpoint is gone, or refuses runs without input
                outcome = await self._record_refused(job, exc.message)
        async with self.session_factory() as session, session.begin():
            await session.execute(
                update(Schedule)
                .where(
                    col(Schedule.id) == job.schedule_id, col(Schedule.claimed_run_id) == job.run_id
                )
                .values(
                    last_run_at=Schedule.claimed_tick_at,
                    last_status=outcome.status,
                    last_run_id=outcome.run_id,
                    **_no_claim(),
                )
                .execution_options(synchronize_session=False)
            )

    async def _record_refused(self, job: ScheduleJob, message: str) -> RunOutcome:
        """A tick that could not even start (its account or endpoint is gone), in the run log."""
        now = self.clock.now()
        async with self.session_factory() as session, session.begin():
            session.add(
                unrun(
                    job.run_id,
                    service_slug=job.slug,
                    endpoint_readable_id=job.readable_id,
                    trigger="schedule",
                    schedule_name=job.name,
                    actor=f"service_account:{job.run_as}",
                    http_status=409,
                    error_type="conflict",
                    message=message,
                    started_at=now,
                    finished_at=now,
                )
            )
        logger.warning("schedule %s could not run: %s", job.name, message)
        return RunOutcome(run_id=job.run_id, status="failed", http_status=409)

    # --- expiry-driven refresh ------------------------------------------------------------------

    async def _claim_refreshes(self, now: datetime, limit: int) -> list[RefreshJob]:
        """Claim secret values whose planned refresh time has come."""
        lease = now + timedelta(seconds=self.settings.lease_seconds)
        claimable = or_(
            col(SecretValue.claimed_by).is_(None), col(SecretValue.claim_expires_at) < now
        )
        query = (
            select(
                col(SecretValue.id),
                col(Secret.name),
                col(Secret.refresh_endpoint),
                col(Secret.refresh_as),
                col(SecretValue.next_refresh_at),
            )
            .join(Secret, col(Secret.id) == col(SecretValue.secret_id))
            .where(
                col(SecretValue.environment) == self.settings.environment,
                col(SecretValue.next_refresh_at) <= now,
                claimable,
                col(Secret.status) != "needs_reauth",
                col(Secret.refresh_endpoint).is_not(None),
                col(Secret.refresh_as).is_not(None),
            )
            .order_by(col(SecretValue.next_refresh_at))
            .limit(limit)
        )
        if self._postgres:
            query = query.with_for_update(of=SecretValue, skip_locked=True)  # type: ignore[arg-type]
        jobs: list[RefreshJob] = []
        async with self.session_factory() as session, session.begin():
            for value_id, name, refresh_endpoint, refresh_as, due_at in (
                await session.execute(query)
            ).all():
                claimed = await session.execute(
                    update(SecretValue)
                    .where(col(SecretValue.id) == value_id, claimable)
                    .values(claimed_by=self.name, claim_expires_at=lease)
                    .execution_options(synchronize_session=False)
                )
                if claimed.rowcount == 1:  # type: ignore[attr-defined]
                    self._lag("refresh", now, due_at)
                    # The query picked only rows that have all three.
                    assert value_id is not None and refresh_endpoint and refresh_as
                    jobs.append(RefreshJob(value_id, name, refresh_endpoint, refresh_as))
        return jobs

    async def _run_refresh(self, job: RefreshJob) -> None:
        """Refresh one secret as its `refresh_as` account; on failure, back off."""
        slug, readable_id = job.refresh_endpoint.split("/", 1)
        outcome: RunOutcome | None = None
        refused: str | None = None
        try:
            async with self.session_factory() as session:
                actor = await AccountStore(session).actor_for_service_account(job.refresh_as)
            if actor.can_run(slug, readable_id):
                outcome = await self.runner.run_endpoint(
                    slug, readable_id, actor=actor, trigger="expiry"
                )
            else:
                refused = (
                    f"refresh_as: the service account {job.refresh_as!r} lacks "
                    f"{service_run_wanted(slug, readable_id)}"
                )
        except TokenfarmError as exc:
            refused = f"refresh_as: {exc.message}"
        if refused is not None:
            logger.warning("refresh of %s could not run: %s", job.secret, refused)
        async with self.session_factory() as session, session.begin():
            value = await session.get(SecretValue, job.value_id)
            secret = await session.get(Secret, value.secret_id) if value is not None else None
            if value is None or secret is None:
                return  # deleted meanwhile
            now = self.clock.now()
            failed = outcome is None or outcome.status != "succeeded"
            if refused is not None:
                # Nobody else would tell: the refresh never ran, so no run marks the secret.
                summary = health.failure_summary("conflict", "permanent", refused)
                health.mark_failed(session, secret, summary)
            if secret.status == "needs_reauth":
                value.next_refresh_at = None
            elif failed or value.next_refresh_at is None or value.next_refresh_at <= now:
                # Failed, or succeeded without writing this value: don't try again at once.
                value.next_refresh_at = backoff_after_failure(max(secret.failure_count, 1), now)
            value.claimed_by = None
            value.claim_expires_at = None


def _no_claim() -> dict[str, Any]:
    """The values that release a schedule's claim."""
    return {
        "claimed_by": None,
        "claim_expires_at": None,
        "claimed_run_id": None,
        "claimed_tick_at": None,
        "run_started_at": None,
    }
