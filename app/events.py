"""What happened, for whoever listens (metrics, notifications): a small in-process event bus.

Runs, the outbound client and the scheduler emit events after the fact (a status change only
once its transaction has committed). A listener never slows down or breaks what emitted: async
listeners run as tasks, and any exception is logged and dropped.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session

logger = logging.getLogger("tokenfarm.events")

# Keys of a session's `info`: the Events its commits announce to (set by the session factory),
# and the events waiting for the commit.
EVENTS_KEY = "tokenfarm.events"
_PENDING_KEY = "tokenfarm.pending_events"


@dataclass(frozen=True)
class RunFinished:
    """A run ended (shared and adopted answers are not runs of their own)."""

    service: str
    endpoint: str
    trigger: str
    status: str  # succeeded | failed
    error_type: str | None
    error_class: str | None
    duration_seconds: float
    run_id: str


@dataclass(frozen=True)
class SecretStatusChanged:
    """A secret's health changed: `ok` -> `failing`/`needs_reauth`, or back to `ok`."""

    secret: str
    old_status: str
    new_status: str
    failure_count: int
    last_error: str | None  # already free of values (it is what the API shows)
    run_id: str | None
    at: datetime


@dataclass(frozen=True)
class UpstreamCall:
    """One outbound request of a run (each attempt of a retried one)."""

    method: str
    host: str
    status: int | None  # None: no answer (timeout, connection failure, refused)
    outcome: str  # ok | http_error | timeout | network | refused | bad_response
    duration_seconds: float


@dataclass(frozen=True)
class SchedulerLag:
    """The scheduler started due work this late (`kind`: schedule or refresh)."""

    kind: str
    seconds: float


@dataclass(frozen=True)
class RefreshRefused:
    """An on-demand refresh was refused without a run: the secret's refreshes keep failing
    (`route`: refresh or value_read, the route that asked)."""

    route: str
    secret: str


@dataclass(frozen=True)
class SecretConnected:
    """A person consented at a provider and a connected secret got its tokens (app/connect)."""

    secret: str
    how: str  # authorization_code | device_code
    previous_status: str
    version: int
    connected_by: str | None
    at: datetime


Event = (
    RunFinished
    | SecretStatusChanged
    | UpstreamCall
    | SchedulerLag
    | RefreshRefused
    | SecretConnected
)
Listener = Callable[[Event], Awaitable[None] | None]


class Events:
    """Listeners by subscription; `emit` calls each with every event."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def subscribe(self, listener: Listener) -> None:
        """Call `listener` with every event from now on (a coroutine function runs as a task)."""
        self._listeners.append(listener)

    def emit(self, event: Event) -> None:
        """Hand the event to every listener; never raises."""
        for listener in self._listeners:
            try:
                result = listener(event)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(self._guard(result))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            except Exception as exc:
                logger.error("event listener failed on %s: %s", type(event).__name__, type(exc))

    @staticmethod
    async def _guard(result: Awaitable[None]) -> None:
        try:
            await result
        except Exception as exc:
            logger.error("event listener failed: %s", type(exc).__name__)

    async def drain(self, timeout_seconds: float) -> None:
        """Wait (at shutdown) for async listeners still at work."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_seconds)


def emit_after_commit(session: Any, event: Event) -> None:
    """Emit `event` once `session` (sync or async) commits, never if it rolls back. Sessions
    made without events (the CLI's) drop it: only a server delivers notifications."""
    if session.info.get(EVENTS_KEY) is not None:
        session.info.setdefault(_PENDING_KEY, []).append(event)


@sa_event.listens_for(Session, "after_commit")
def _emit_committed(session: Session) -> None:
    pending = session.info.pop(_PENDING_KEY, None)
    if pending:
        events: Events = session.info[EVENTS_KEY]
        for event in pending:
            events.emit(event)


@sa_event.listens_for(Session, "after_rollback")
def _drop_rolled_back(session: Session) -> None:
    session.info.pop(_PENDING_KEY, None)
