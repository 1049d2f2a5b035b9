"""Which adapter SQLite engines use: the one-trip adapter of app/sqlite_one_trip.py, or
SQLAlchemy's stock aiosqlite adapter when that one can't be used.

The one-trip adapter leans on internals of SQLAlchemy and aiosqlite (pinned in pyproject.toml
to the versions it was tested with). Whether they are all there is checked once, when this
module is imported; if one is missing, SQLite engines use the stock adapter (slower by a few
thread trips per statement, otherwise the same) and the first one made logs one warning that
says why. `TOKENFARM_SQLITE_DRIVER=stock` chooses the stock adapter on purpose (to rule the
one-trip adapter out when chasing a problem); `one-trip`, the default, uses it when it can.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

from app.errors import ConfigurationError

logger = logging.getLogger("tokenfarm.db")

SqliteDriver = Literal["one-trip", "stock"]
DRIVER_VARIABLE = "TOKENFARM_SQLITE_DRIVER"

try:
    from app.sqlite_one_trip import one_trip_dbapi
except (ImportError, AttributeError) as exc:
    ONE_TRIP_UNAVAILABLE: str | None = f"{type(exc).__name__}: {exc}"
else:
    ONE_TRIP_UNAVAILABLE = None

_warned = False


def requested_driver() -> SqliteDriver:
    """The adapter `TOKENFARM_SQLITE_DRIVER` asks for (default `one-trip`)."""
    value = os.environ.get(DRIVER_VARIABLE, "").strip().lower() or "one-trip"
    if value not in ("one-trip", "stock"):
        raise ConfigurationError(f"{DRIVER_VARIABLE} must be one-trip or stock, not {value!r}")
    return "stock" if value == "stock" else "one-trip"


def sqlite_dbapi() -> Any | None:
    """The DBAPI module for `create_async_engine(module=...)`, or None for SQLAlchemy's stock
    aiosqlite adapter (asked for, or the one-trip adapter's internals are missing)."""
    global _warned
    if requested_driver() == "stock":
        return None
    if ONE_TRIP_UNAVAILABLE is not None:
        if not _warned:
            _warned = True
            logger.warning(
                "SQLite runs on SQLAlchemy's stock aiosqlite adapter: the one-trip adapter "
                "needs internals that the installed SQLAlchemy or aiosqlite lacks (%s); "
                "install the versions pyproject.toml pins",
                ONE_TRIP_UNAVAILABLE,
            )
        return None
    return one_trip_dbapi()
