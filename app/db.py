"""The async engine and sessions; users give plain URLs and the driver is chosen here."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Column, DateTime, Dialect, Select, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.types import TypeDecorator
from sqlmodel import SQLModel

from app.errors import ConfigurationError, NotFound
from app.events import EVENTS_KEY, Events
from app.sqlite_driver import sqlite_dbapi

T = TypeVar("T")

DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}


def async_database_url(url: str) -> str:
    """`sqlite:///x.db` -> `sqlite+aiosqlite:///x.db`, `postgresql://…` -> `postgresql+asyncpg://…`."""
    try:
        parsed = make_url(url)
    except Exception:
        raise ConfigurationError(
            "TOKENFARM_DATABASE_URL is not a database URL: use sqlite:///path/to/file.db "
            "or postgresql://user:password@host:5432/dbname"
        ) from None
    backend = parsed.drivername.split("+", 1)[0]
    if backend not in DRIVERS:
        raise ConfigurationError(
            f"TOKENFARM_DATABASE_URL uses {backend!r}; tokenfarm supports sqlite:// and postgresql://"
        )
    if backend != "sqlite" and "sslmode" in parsed.query:
        # URLs copied from a provider speak libpq (`sslmode=require`); asyncpg calls it `ssl`.
        sslmode = parsed.query["sslmode"]
        parsed = parsed.difference_update_query(["sslmode"]).update_query_dict({"ssl": sslmode})
    return parsed.set(drivername=DRIVERS[backend]).render_as_string(hide_password=False)


def is_sqlite(engine: AsyncEngine) -> bool:
    """Whether the engine talks to SQLite (which has no advisory locks)."""
    return engine.dialect.name == "sqlite"


def create_engine(url: str) -> AsyncEngine:
    """An engine for a plain URL; SQLite gets WAL, a busy timeout and enforced foreign keys.

    Pools keep enough connections for a busy replica: a connection opened past `pool_size` is
    closed again when returned, and opening one (a thread and a file on SQLite, a login on
    PostgreSQL) costs more than the query it serves.
    """
    driver_url = async_database_url(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "pool_size": 10, "max_overflow": 20}
    parsed = make_url(driver_url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        kwargs = {"connect_args": {"timeout": 30}, "pool_size": 20, "max_overflow": 20}
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            # SQLAlchemy 2.1's pool for a file, named so that the stock adapter of an older
            # release (NullPool there, which refuses pool sizes) pools the same way.
            kwargs["poolclass"] = AsyncAdaptedQueuePool
        module = sqlite_dbapi()  # None: SQLAlchemy's stock adapter (app/sqlite_driver.py)
        if module is not None:
            kwargs["module"] = module
    engine = create_async_engine(driver_url, **kwargs)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

    return engine


def create_lock_engine(engine: AsyncEngine, lock_timeout_seconds: float) -> AsyncEngine | None:
    """On PostgreSQL, a second pool for runs' advisory locks (None on SQLite).

    A run holds its endpoint's lock on a connection for its whole turn; a pool of their own
    means waiting runs can never take every connection the short data transactions need. Its
    connections wait for a lock at most `lock_timeout_seconds` (set once per connection, not
    per turn: a statement less on every run).
    """
    if engine.dialect.name != "postgresql":
        return None
    timeout_ms = str(max(int(lock_timeout_seconds * 1000), 1))
    return create_async_engine(
        engine.url,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=40,
        connect_args={"server_settings": {"lock_timeout": timeout_ms}},
    )


def session_factory(
    engine: AsyncEngine, events: Events | None = None
) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit; with `events`, what they commit
    is announced there (app/events.py `emit_after_commit`)."""
    return async_sessionmaker(
        engine, expire_on_commit=False, info={EVENTS_KEY: events} if events else None
    )


async def flushed_connection(session: AsyncSession) -> AsyncConnection:
    """The session's connection for Core statements, after its pending ORM changes are flushed
    (Core statements don't autoflush: a row added in this transaction must be there for them)."""
    if session.new or session.dirty or session.deleted:
        await session.flush()
    return await session.connection()


async def one_or_not_found(
    session: AsyncSession, query: Select[T], what: str, params: dict[str, Any] | None = None
) -> T:
    """The one object `query` finds, or NotFound saying "`what` does not exist" (every store's
    lookup by name)."""
    found = (await session.execute(query, params)).scalar_one_or_none()
    if found is None:
        raise NotFound(f"{what} does not exist")
    return found


def storable(message: str | None) -> str | None:
    """Text every database stores: messages quote upstream answers, and PostgreSQL refuses NUL."""
    return None if message is None else message.replace("\x00", "\ufffd")


NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
SQLModel.metadata.naming_convention = NAMING_CONVENTION


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite forgets the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def timestamp_column(nullable: bool = True, *, index: bool = False) -> Any:
    """A `UTCDateTime` column for a SQLModel field."""
    return Column(UTCDateTime(), nullable=nullable, index=index)
