"""The SQLite adapter (app/sqlite_driver.py): one trip to aiosqlite's thread per statement, and
everything SQLAlchemy reads from a cursor still right."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import create_engine
from app.sqlite_driver import OneTripConnection


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'driver.db'}")
    async with engine.begin() as connection:
        await connection.execute(
            text("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT UNIQUE, n INTEGER)")
        )
    yield engine
    await engine.dispose()


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every call run in an aiosqlite connection's thread, by function name."""
    seen: list[str] = []
    original = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(getattr(fn, "__name__", repr(fn)))
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    return seen


async def test_engines_use_the_one_trip_connection(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        assert isinstance(raw.dbapi_connection, OneTripConnection)


async def test_a_statement_is_one_trip_with_rows_rowcount_and_lastrowid(
    engine: AsyncEngine, trips: list[str]
) -> None:
    async with engine.begin() as connection:
        trips.clear()
        inserted = await connection.execute(
            text("INSERT INTO item (name, n) VALUES (:name, :n)"), {"name": "a", "n": 1}
        )
        assert inserted.lastrowid == 1
        assert trips == ["_run"]

        trips.clear()
        await connection.execute(
            text("INSERT INTO item (name, n) VALUES (:name, :n)"),
            [{"name": "b", "n": 2}, {"name": "c", "n": 3}],
        )
        assert trips == ["_run"]

        trips.clear()
        updated = await connection.execute(text("UPDATE item SET n = n + 10 WHERE n >= 2"))
        assert updated.rowcount == 2
        assert trips == ["_run"]

        trips.clear()
        rows = (await connection.execute(text("SELECT name, n FROM item ORDER BY id"))).all()
        assert [tuple(row) for row in rows] == [("a", 1), ("b", 12), ("c", 13)]
        assert trips == ["_run"]

        trips.clear()
        empty = await connection.execute(text("SELECT name FROM item WHERE n > 100"))
        assert list(empty.keys()) == ["name"]
        assert empty.all() == []
        assert trips == ["_run"]


async def test_errors_are_sqlalchemys_and_the_connection_stays_usable(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("INSERT INTO item (name, n) VALUES ('x', 1)"))
        with pytest.raises(IntegrityError):
            await connection.execute(text("INSERT INTO item (name, n) VALUES ('x', 2)"))
        with pytest.raises(OperationalError, match="no such table"):
            await connection.execute(text("SELECT * FROM missing"))
        await connection.rollback()
        assert (await connection.execute(text("SELECT count(*) FROM item"))).scalar_one() == 0


async def test_commit_and_rollback_make_a_trip_only_when_sqlite_has_a_transaction(
    engine: AsyncEngine, trips: list[str]
) -> None:
    # A read begins no transaction in SQLite: its commit, and the rollback every connection
    # gets when it goes back to the pool, have nothing to do.
    trips.clear()
    async with engine.connect() as connection:
        await connection.execute(text("SELECT count(*) FROM item"))
        await connection.commit()
    assert trips == ["_run"]

    # A write's commit and a write's rollback still go to SQLite, and do what they say.
    trips.clear()
    async with engine.connect() as connection:
        await connection.execute(text("INSERT INTO item (name, n) VALUES ('kept', 1)"))
        await connection.commit()
        await connection.execute(text("INSERT INTO item (name, n) VALUES ('dropped', 2)"))
        await connection.rollback()
    assert trips == ["_run", "commit", "_run", "rollback"]
    async with engine.connect() as connection:
        names = (await connection.execute(text("SELECT name FROM item"))).scalars().all()
    assert names == ["kept"]
