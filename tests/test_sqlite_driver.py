"""The SQLite adapters: the one-trip adapter (app/sqlite_one_trip.py) makes one trip to
aiosqlite's thread per statement and keeps everything SQLAlchemy reads from a cursor right; the
stock one (app/sqlite_driver.py) takes over when asked, or when an internal is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.dialects.sqlite.aiosqlite import AsyncAdapt_aiosqlite_connection
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import create_engine
from app.errors import ConfigurationError
from app.sqlite_driver import DRIVER_VARIABLE
from app.sqlite_one_trip import OneTripConnection
from tests.conftest import TokenServer, secret_value, setup_oauth, sqlite_database


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


class TestStockAdapter:
    """SQLAlchemy's own aiosqlite adapter: asked for with TOKENFARM_SQLITE_DRIVER=stock, or
    taken when an internal the one-trip adapter needs is missing."""

    @pytest.fixture
    def database_url(
        self, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> str:
        """SQLite, on the stock adapter from the app's first engine on."""
        monkeypatch.setenv(DRIVER_VARIABLE, "stock")
        return sqlite_database(request, tmp_path)

    async def test_the_app_refreshes_and_reads_on_the_stock_adapter(
        self, app: FastAPI, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        async with app.state.engine.connect() as connection:
            raw = await connection.get_raw_connection()
            assert type(raw.dbapi_connection) is AsyncAdapt_aiosqlite_connection
        oauth = await setup_oauth(client, token_server)

        refreshed = await client.get("/refresh/ACCESS_TOKEN")

        assert refreshed.status_code == 200, refreshed.text
        assert refreshed.json()["status"] == "succeeded"
        read = await client.get("/v1/secrets/ACCESS_TOKEN/value")
        assert read.status_code == 200, read.text
        assert read.json()["version"] == 1 and read.json()["value"]
        assert await secret_value(client, "REFRESH_TOKEN") != oauth.refresh_token
        assert token_server.state.token_requests == 1

    def test_an_unknown_choice_is_a_configuration_error(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(DRIVER_VARIABLE, "fast")
        with pytest.raises(ConfigurationError, match="one-trip or stock"):
            create_engine("sqlite:///unused.db")


# A fresh interpreter where `sqlalchemy.util.concurrency` has no `await_` for newcomers, as in
# releases before 2.1 (SQLAlchemy itself, imported first, keeps the references it took).
WITHOUT_AWAIT = """
import asyncio, logging, sys, types
import sqlalchemy.dialects.sqlite.aiosqlite
import sqlalchemy.util.concurrency as concurrency
older = types.ModuleType(concurrency.__name__)
older.__dict__.update({k: v for k, v in vars(concurrency).items() if k != "await_"})
sys.modules[concurrency.__name__] = older
from sqlalchemy import text
from app.db import create_engine
from app.sqlite_driver import ONE_TRIP_UNAVAILABLE

logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
print("unavailable:", ONE_TRIP_UNAVAILABLE)

async def main():
    for name in ("a.db", "b.db"):
        engine = create_engine(f"sqlite:///{name}")
        async with engine.connect() as connection:
            raw = await connection.get_raw_connection()
            answer = await connection.scalar(text("SELECT 41 + 1"))
            print(type(raw.dbapi_connection).__name__, answer)
        await engine.dispose()

asyncio.run(main())
"""


def test_a_missing_internal_falls_back_to_the_stock_adapter_with_one_warning(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if k != DRIVER_VARIABLE}
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_AWAIT],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("unavailable: ImportError: cannot import name 'await_'")
    assert lines[1:] == ["AsyncAdapt_aiosqlite_connection 42"] * 2
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1, done.stderr
    assert (
        "WARNING tokenfarm.db: SQLite runs on SQLAlchemy's stock aiosqlite adapter" in warnings[0]
    )
    assert "await_" in warnings[0]
