"""What a tokenfarm process runs on: the database, the outbound client, the runner, and the
scheduler; shared by `tokenfarm serve` (the app's lifespan) and `tokenfarm scheduler`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.clock import Clock, SystemClock
from app.config import Settings
from app.crypto import Keyring
from app.db import create_engine, create_lock_engine, session_factory
from app.events import Events
from app.notifications.notifier import Notifier
from app.outbound import Outbound
from app.runs.runner import Runner
from app.schedules.scheduler import Scheduler


@dataclass
class Runtime:
    """The long-lived parts of a process."""

    engine: AsyncEngine
    session_factory: async_sessionmaker[AsyncSession]
    outbound: Outbound
    runner: Runner
    events: Events
    notifier: Notifier


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
    try:
        yield Runtime(engine, factory, outbound, runner, events, notifier)
    finally:
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
