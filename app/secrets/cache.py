"""Current values kept in memory on SQLite, for as long as nothing in the database changed.

Apps read their token far more often than it changes. On SQLite, `PRAGMA data_version` on a
connection of its own tells in a few microseconds whether any other connection (this process's
pool, the CLI, a `tokenfarm scheduler` process) has committed anything since the last look: if
so, every entry is dropped before the next read is answered. A read therefore never answers a
value older than the last commit, exactly as a read from the database would, and costs no query
while nothing changes. Any commit at all (a run's log row, a key's last-use time) empties the
cache: coarse, and never wrong.

PostgreSQL has no such cheap, exact check (replicas write without this process knowing), so there
every read goes to the database.

Entries hold decrypted values, which live in this process's memory anyway while they are read;
they are never logged and go away with the next change.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy.engine import make_url

from app.db import utcnow
from app.secrets.schemas import SecretValueRead

MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class CachedValue:
    """A value as read, and the response body that answers it."""

    read: SecretValueRead
    body: bytes

    @classmethod
    def of(cls, read: SecretValueRead) -> CachedValue:
        """Serialize once; every read from the cache answers these bytes."""
        return cls(read, read.model_dump_json().encode())


class DataVersion:
    """`PRAGMA data_version` of a SQLite file, read on a read-only connection of its own."""

    def __init__(self, path: Path) -> None:
        self._connection = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
        )

    def current(self) -> int:
        """A number that changes whenever another connection commits to the database."""
        row = self._connection.execute("PRAGMA data_version").fetchone()
        return int(row[0])

    def close(self) -> None:
        """Close the connection."""
        self._connection.close()


class ValueCache:
    """(secret, environment asked for) → the value read, valid while the database is unchanged.

    Without a `DataVersion` (PostgreSQL, an in-memory database) it holds nothing.
    """

    def __init__(self, data_version: DataVersion | None) -> None:
        self._data_version = data_version
        self._seen: int | None = None
        self._entries: dict[tuple[str, str | None], CachedValue] = {}

    @classmethod
    def for_database(cls, url: str) -> ValueCache:
        """A cache for the database at `url` (plain URL, as configured)."""
        parsed = make_url(url)
        database = parsed.database or ""
        if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
            return cls(None)
        if database.startswith("file:") or not Path(database).exists():
            return cls(None)
        try:
            data_version = DataVersion(Path(database))
            data_version.current()
        except sqlite3.Error:
            # Unreadable this way (permissions, an odd file system): read from the database.
            return cls(None)
        return cls(data_version)

    @property
    def enabled(self) -> bool:
        """Whether this cache can hold anything at all."""
        return self._data_version is not None

    def version(self) -> int | None:
        """The database's change counter now; entries from before a change are dropped."""
        if self._data_version is None:
            return None
        current = self._data_version.current()
        if current != self._seen:
            self._entries.clear()
            self._seen = current
        return current

    def get(self, name: str, environment: str | None) -> CachedValue | None:
        """The value last read for `name` and `environment`, if nothing changed since."""
        if self.version() is None:
            return None
        return self._entries.get((name, environment))

    def answer(
        self, name: str, environment: str | None, min_valid_seconds: int | None
    ) -> bytes | None:
        """The response body for a read the cache can answer (for `min_valid_seconds`, only if
        the value stays valid that long), else None. The caller has checked the permission."""
        cached = self.get(name, environment)
        if cached is None:
            return None
        if min_valid_seconds is not None:
            expires_at = cached.read.expires_at
            if expires_at is not None and expires_at <= utcnow() + timedelta(
                seconds=min_valid_seconds
            ):
                return None
        return cached.body

    def put(
        self, name: str, environment: str | None, value: CachedValue, version: int | None
    ) -> None:
        """Keep a value read while the database was at `version` (taken before reading it)."""
        if version is None or self.version() != version:
            # Something was committed while it was being read: it may already be stale.
            return
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[(name, environment)] = value

    def close(self) -> None:
        """Forget everything and close the connection."""
        self._entries.clear()
        if self._data_version is not None:
            self._data_version.close()
