"""Runs that take turns and runs that callers share.

Two concurrent refreshes would both spend the same rotating refresh token, and the reuse revokes
its whole family. So a run takes turns with every other run of its endpoint and every run that
writes one of the same secrets: in this process with asyncio locks, and on PostgreSQL with
transaction-scoped advisory locks, held on a connection of their own, so replicas take turns
too. Callers without request data share the run in flight (a `Flight`) instead of starting
one of their own; and a run that waited for its turn adopts the result of the run that went
first, if that one refreshed its targets meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.auth.actor import Actor
from app.errors import Conflict, is_database_outage
from app.runs.record import PreparedRun, RunOutcome
from app.secrets import sql
from app.secrets.sql import LoadedSecret

logger = logging.getLogger("tokenfarm.run")

# A flight's key: the endpoint (slug, readable_id) and whether the run is forced.
FlightKey = tuple[str, str, bool]


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


def turns_of(slug: str, readable_id: str, targets: set[str], environment: str) -> list[str]:
    """The turns a run takes, in the one order every run takes them (no deadlock)."""
    turns = {endpoint_turn(slug, readable_id)}
    turns.update(secret_turn(name, environment) for name in targets)
    return sorted(turns)


@dataclass
class Turn:
    """The lock of one turn and how many runs hold or await it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


# Built once: building and keying a statement costs several times what executing it does.
_TAKE_TURNS = text(
    "SELECT pg_advisory_xact_lock(t.key) "
    "FROM unnest(CAST(:keys AS bigint[])) WITH ORDINALITY AS t(key, n) ORDER BY t.n"
)


class Turns:
    """The turns runs take: asyncio locks in this process, advisory locks across replicas."""

    def __init__(self, lock_engine: AsyncEngine | None) -> None:
        # PostgreSQL only: a pool of its own for the advisory locks, so that runs waiting for
        # their turn never starve the short data transactions of a connection.
        self.lock_engine = lock_engine
        self._held: dict[str, Turn] = {}

    @asynccontextmanager
    async def in_process(self, turns: list[str]) -> AsyncIterator[bool]:
        """Wait for the earlier runs sharing a turn in this process (yields whether it had to)."""
        counted: list[str] = []
        acquired: list[asyncio.Lock] = []
        waited = False
        try:
            for name in turns:
                turn = self._held.setdefault(name, Turn())
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
                turn = self._held[name]
                turn.users -= 1
                if not turn.users:
                    del self._held[name]

    @asynccontextmanager
    async def across_replicas(
        self, turns: list[str], deadline_seconds: float
    ) -> AsyncIterator[bool]:
        """On PostgreSQL, hold the turns' advisory locks (yields whether they are held); a
        Conflict when another replica holds one past `deadline_seconds`."""
        if self.lock_engine is None:
            yield False
            return
        keys = [advisory_key(name) for name in turns]
        over = False
        try:
            async with self.lock_engine.connect() as connection, connection.begin():
                # Every lock in one statement, in the turns' order (no deadlock): the function
                # runs once per row, after the ordering. The pool's connections carry the
                # lock_timeout (app/db.py `create_lock_engine`).
                await connection.execute(_TAKE_TURNS, {"keys": keys})
                yield True
                over = True
        except Exception as exc:
            if over and is_database_outage(exc):
                # The run is over and the database went away: its locks went with the session;
                # the run's own outcome (kept answer and all) is what the caller must see.
                return
            if not isinstance(exc, DBAPIError):
                raise
            if (
                "lock timeout" in str(exc.orig).lower()
                or "LockNotAvailable" in type(exc.orig).__name__
            ):
                raise Conflict(
                    f"{turns[0].removeprefix('tokenfarm/run/')} or a run writing the same "
                    f"secrets is still running on another replica after "
                    f"{deadline_seconds:g} s; try again later"
                ) from None
            raise


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


class Flights:
    """The runs in flight by endpoint, and the last one of each that landed."""

    def __init__(self) -> None:
        self._flying: dict[FlightKey, Flight] = {}
        # The last flight of each endpoint that landed, for callers that arrived during it.
        self._landed: dict[FlightKey, Flight] = {}

    def shared(self, key: FlightKey, received_at: float | None) -> Flight | None:
        """The run a caller without request data shares: the one in flight, else the last one
        if it landed after the caller's request arrived (a burst queues in the server)."""
        flight = self._flying.get(key)
        if flight is None and received_at is not None:
            last = self._landed.get(key)
            if last is not None and last.landed_at is not None and received_at < last.landed_at:
                flight = last
        return flight

    def board(
        self, key: FlightKey, horizon_seconds: Callable[[], float]
    ) -> tuple[Flight, Callable[[asyncio.Task[RunOutcome]], None]]:
        """A new flight of `key`, and the callback that lands it when its task is done.

        Flights that landed more than `horizon_seconds()` before are forgotten then: every
        request that arrived before they did has been served by now (a request waits at most
        about a run's deadline).
        """
        flight = Flight()
        self._flying[key] = flight

        def landed(_: asyncio.Task[RunOutcome]) -> None:
            flight.loaded.set()
            flight.landed_at = time.monotonic()
            if self._flying.get(key) is flight:
                del self._flying[key]
            self._landed[key] = flight
            horizon = flight.landed_at - horizon_seconds()
            for old_key, old in list(self._landed.items()):
                if old.landed_at is not None and old.landed_at < horizon:
                    del self._landed[old_key]

        return flight, landed


def changed_versions(
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


async def adopt(
    session_factory: async_sessionmaker[AsyncSession],
    snapshot: PreparedRun,
    now: dict[str, LoadedSecret | None],
) -> RunOutcome | None:
    """The result of a run that refreshed the targets since `snapshot` was loaded, if any.

    Only a run's write counts: a value set by hand meanwhile is not a refresh.
    """
    changed = changed_versions(snapshot.secrets, now, snapshot.target_names)
    if not changed:
        return None
    async with session_factory() as session:
        for name in sorted(changed):
            loaded = now[name]
            if loaded is None:
                continue
            row = await sql.version_origin(
                session, loaded.secret.id, loaded.environment, loaded.version
            )
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
