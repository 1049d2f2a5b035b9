"""What a tokenfarm process runs on: the database, the outbound client, the runner, and the
scheduler; shared by `tokenfarm serve` (the app's lifespan) and `tokenfarm scheduler`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.backoff import backoff_seconds
from app.clock import Clock, SystemClock
from app.config import Settings
from app.connect.device import DevicePolls
from app.crypto import Keyring
from app.db import create_engine, create_lock_engine, session_factory, utcnow
from app.errors import is_database_outage
from app.events import Events
from app.notifications.notifier import Notifier
from app.outbound import Outbound
from app.runs.recovery import find_orphans
from app.runs.runner import Runner
from app.schedules.scheduler import Scheduler

logger = logging.getLogger("tokenfarm.run")
REPLAY_POLL_SECONDS = 1.0


@dataclass
class Runtime:
    """The long-lived parts of a process."""

    engine: AsyncEngine
    session_factory: async_sessionmaker[AsyncSession]
    outbound: Outbound
    runner: Runner
    events: Events
    notifier: Notifier
    device_polls: DevicePolls


@asynccontextmanager
async def runtime(settings: Settings, keyring: Keyring) -> AsyncIterator[Runtime]:
    """Open the database and the outbound client; on exit, let runs in flight store what their
    upstream sent before closing them."""
    events = Events()
    engine = create_engine(settings.resolved_database_url)
    outbound = Outbound(
        default_timeout_seconds=settings.http_timeout_seconds,
        egress_allow=settings.egress_allow,
        events=events,
    )
    factory = session_factory(engine, events)
    lock_engine = create_lock_engine(engine, settings.run_deadline_seconds)
    runner = Runner(factory, keyring, outbound, settings, lock_engine=lock_engine, events=events)
    # Webhooks: this process delivers the status changes of its own runs.
    notifier = Notifier(factory, keyring, settings)
    events.subscribe(notifier.notify)
    # Device grants (RFC 8628) this process polls for; ended at shutdown.
    device_polls = DevicePolls(factory, keyring, settings, outbound)
    stop_replaying = asyncio.Event()
    replaying = asyncio.ensure_future(replay_kept_answers(runner, stop_replaying))
    try:
        yield Runtime(engine, factory, outbound, runner, events, notifier, device_polls)
    finally:
        await device_polls.aclose()
        # Stopped between passes, not cancelled inside one: a query cancelled mid-flight leaves
        # its driver thread answering a loop that is gone.
        stop_replaying.set()
        try:
            await asyncio.wait_for(replaying, timeout=settings.http_timeout_seconds)
        except (TimeoutError, asyncio.CancelledError):
            pass
        await runner.drain(timeout_seconds=settings.http_timeout_seconds)
        await events.drain(timeout_seconds=settings.http_timeout_seconds)
        await notifier.aclose()
        await outbound.aclose()
        if lock_engine is not None:
            await lock_engine.dispose()
        await engine.dispose()


@asynccontextmanager
async def scheduling(
    parts: Runtime, settings: Settings, clock: Clock | None = None
) -> AsyncIterator[Scheduler]:
    """Run the scheduler in the background for the duration of the block."""
    scheduler = Scheduler(
        parts.session_factory, parts.runner, settings, clock or SystemClock(), events=parts.events
    )
    stop = asyncio.Event()
    task = asyncio.ensure_future(scheduler.serve(stop))
    try:
        yield scheduler
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def replay_kept_answers(runner: Runner, stop: asyncio.Event) -> None:
    """Write the answers kept but not written: at start-up, those of runs a process that died
    left `storing`, and the spool's; from then on the spool's whenever the database is back,
    retrying with backoff while it is down (app/runs/spool.py)."""
    storage = runner.storage
    started_at = utcnow()
    scanned = False
    failures = 0
    while not stop.is_set():
        try:
            if not scanned:
                storage.orphans.update(await find_orphans(storage.session_factory, started_at))
                scanned = True
            if not storage.spool.empty or storage.orphans:
                await runner.replay_kept_answers()
            failures = 0
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failures += 1
            if is_database_outage(exc):
                logger.info("kept answers wait for the database (%s)", type(exc).__name__)
            else:
                logger.error("replaying kept answers failed: %s", type(exc).__name__)
        delay = REPLAY_POLL_SECONDS
        if failures:
            delay = backoff_seconds(
                failures, base_seconds=0.5, max_seconds=30, fixed_share=0.5, random_share=0.5
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
