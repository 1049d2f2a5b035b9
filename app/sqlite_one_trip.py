"""SQLAlchemy's aiosqlite adapter, with one trip to the driver's thread per statement.

aiosqlite runs each SQLite connection in a thread of its own; every awaited call on it is a
trip there and back through a queue and the event loop (~35-50 µs here). SQLAlchemy's adapter
makes four or five trips per statement (open a cursor, execute, fetch the rows, close the
cursor), which on a refresh's twenty-odd statements cost more than SQLite's own work.
`OneTripCursor` does all of that in a single function run in the connection's thread and keeps
what SQLAlchemy reads afterwards (description, rowcount, lastrowid, rows) on the loop's side.
`OneTripConnection` also skips the trip of a commit or rollback when SQLite has no transaction
open: every pooled connection is rolled back when it is returned, and a read-only session never
began one (sqlite3 begins a transaction only before a write).

It reaches into `aiosqlite.Connection._execute` and `._conn`, as SQLAlchemy's own adapter does
(`_tx`, `_conn`), and into the slots of SQLAlchemy 2.1's asyncio adapters. Importing this module
fails (ImportError, or AttributeError from `check_internals`) when one of them is missing;
app/sqlite_driver.py then falls back to SQLAlchemy's stock adapter. tests/test_sqlite_driver.py
checks it against the installed versions.
"""

from __future__ import annotations

import collections
import sqlite3
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

_Outcome = tuple[Any, int, int | None, list[Any] | None]


def _slots(cls: type) -> set[str]:
    """The slot names of a class and its bases."""
    names: set[str] = set()
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        names.update((slots,) if isinstance(slots, str) else slots)
    return names


def check_internals() -> None:
    """Raise AttributeError naming what this module uses that the installed SQLAlchemy or
    aiosqlite lacks (the imports above check the rest)."""
    missing = [
        f"{owner.__module__}.{owner.__qualname__}.{name}"
        for owner, names in (
            (aiosqlite.Connection, ("_execute", "_conn")),
            (AsyncAdapt_aiosqlite_cursor, ("_async_soft_close",)),
            (AsyncAdapt_aiosqlite_connection, ("_handle_exception", "_cursor_cls")),
        )
        for name in names
        if not hasattr(owner, name)
    ]
    # Set by OneTripCursor itself, read by the base cursor's fetch methods.
    needed_slots = {"_adapt_connection", "_connection", "_rows", "_soft_closed_memoized"}
    missing += [
        f"AsyncAdapt_aiosqlite_cursor slot {name}"
        for name in sorted(needed_slots - _slots(AsyncAdapt_aiosqlite_cursor))
    ]
    if "_connection" not in _slots(AsyncAdapt_aiosqlite_connection):
        missing.append("AsyncAdapt_aiosqlite_connection slot _connection")
    if missing:
        raise AttributeError(", ".join(missing))


def _run(connection: sqlite3.Connection, operation: str, parameters: Any, many: bool) -> _Outcome:
    """Execute and fetch everything (in the connection's thread)."""
    cursor = connection.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else None
        return description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    """A client-side cursor whose statement runs in one trip, results kept here."""

    __slots__ = ("_arraysize", "_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection):
        # No driver cursor is opened here (that was a trip of its own).
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None
        self._arraysize = 1

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> Any:
        return self._lastrowid

    @property
    def arraysize(self) -> int:
        return self._arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._arraysize = value

    async def _async_soft_close(self) -> None:
        """Nothing is open on the driver's side."""

    def close(self) -> None:
        self._rows.clear()

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        return self._trip(operation, parameters, many=False)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        return self._trip(operation, seq_of_parameters, many=True)

    def _trip(self, operation: Any, parameters: Any, *, many: bool) -> None:
        driver = self._connection
        try:
            description, rowcount, lastrowid, rows = await_(
                driver._execute(_run, driver._conn, operation, parameters, many)
            )
        except Exception as error:
            self._adapt_connection._handle_exception(error)  # raises the DBAPI's error
        self._description, self._rowcount, self._lastrowid = description, rowcount, lastrowid
        self._rows = collections.deque(rows) if rows is not None else collections.deque()


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    """The aiosqlite adapter's connection, handing out one-trip cursors."""

    __slots__ = ()

    _cursor_cls = OneTripCursor  # type: ignore[assignment]  # a subclass, as it should be

    def _in_transaction(self) -> bool:
        """Whether SQLite has a transaction open on this connection. Read on the loop's side:
        `in_transaction` only asks SQLite's autocommit flag, and nothing else runs on this
        connection while its one user awaits here."""
        try:
            return bool(self._connection._conn.in_transaction)
        except ValueError:  # aiosqlite: no active connection
            return False

    def commit(self) -> None:
        if self._in_transaction():
            super().commit()

    def rollback(self) -> None:
        if self._in_transaction():
            super().rollback()


class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """The aiosqlite DBAPI shim whose connections use `OneTripCursor`; passed to
    `create_async_engine(module=...)` so that URLs stay plain `sqlite+aiosqlite`."""

    def connect(self, *arg: Any, **kw: Any) -> OneTripConnection:
        adapted = super().connect(*arg, **kw)
        return OneTripConnection(self, adapted._connection)


def one_trip_dbapi() -> OneTripDBAPI:
    """A fresh shim over the installed aiosqlite and sqlite3."""
    return OneTripDBAPI(aiosqlite, sqlite3)


check_internals()
