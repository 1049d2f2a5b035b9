"""The secrets domain's statements: built once, run on a connection by whoever owns the
transaction (the store for a request's writes, the runner for a run's).

Core, not the ORM, on every path a refresh takes: building and keying a statement costs several
times what executing it does, and loading ORM objects costs more than the query. Parameters
prefixed `w_` are the WHERE clause's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.secrets.expiry import ValueTiming, plan_next_refresh
from app.secrets.health import changes_of_write
from app.secrets.models import Secret, SecretValue, SecretVersion
from app.secrets.schemas import ValueWritten

SECRET_TABLE = Secret.__table__  # type: ignore[attr-defined]
VALUE_TABLE = SecretValue.__table__  # type: ignore[attr-defined]
VERSION_TABLE = SecretVersion.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class SecretState:
    """What a run needs of a secret's row: read with Core, not loaded as a `Secret` (every run
    reads several, and loading ORM objects costs more than the query)."""

    id: int
    name: str
    environment_specific: bool
    locked: bool
    status: str
    # Origins a run may send the value to; None: anywhere.
    allowed_destinations: tuple[str, ...] | None = None


@dataclass(frozen=True)
class LoadedSecret:
    """A secret with its current value for one environment, as a run sees it."""

    secret: SecretState
    environment: str
    value: Any
    version: int
    expires_at: datetime | None


@dataclass
class ValueWrite:
    """One new version of a value, as `store_values` writes it."""

    secret_id: int
    environment: str
    base_version: int | None  # the version replaced (compare-and-set); None: the first value
    row: dict[str, Any]  # the value row's new columns
    history: dict[str, Any]  # the version row's columns besides the value's
    secret_changes: dict[str, Any]  # the secret row's changed columns
    versions_kept: int

    @classmethod
    def of(
        cls,
        secret_id: int,
        environment: str,
        *,
        base_version: int | None,
        version: int,
        ciphertext: str,
        expires_at: datetime | None,
        next_refresh_at: datetime | None,
        source: str,
        run_id: str | None,
        actor: str | None,
        now: datetime,
        versions_kept: int,
    ) -> ValueWrite:
        """The write of one new version, with what it changes on the secret row."""
        return cls(
            secret_id=secret_id,
            environment=environment,
            base_version=base_version,
            row={
                "version": version,
                "ciphertext": ciphertext,
                "expires_at": expires_at,
                "updated_at": now,
                "next_refresh_at": next_refresh_at,
            },
            history={"source": source, "run_id": run_id, "actor": actor, "created_at": now},
            secret_changes=changes_of_write(source, now),
            versions_kept=versions_kept,
        )

    @classmethod
    def of_run(
        cls,
        loaded: LoadedSecret,
        ciphertext: str,
        expires_at: datetime | None,
        *,
        run_id: str,
        actor: str,
        now: datetime,
        versions_kept: int,
    ) -> ValueWrite:
        """A run's write, compare-and-set on the version the run read (its refresh is planned
        by `plan_run_writes`, on the secret row as it is when the write is stored)."""
        return cls.of(
            loaded.secret.id,
            loaded.environment,
            base_version=loaded.version or None,
            version=loaded.version + 1,
            ciphertext=ciphertext,
            expires_at=expires_at,
            next_refresh_at=None,
            source="run",
            run_id=run_id,
            actor=actor,
            now=now,
            versions_kept=versions_kept,
        )

    def written(self, name: str) -> ValueWritten:
        """What the write stored, as its caller reports it (never the value)."""
        return ValueWritten(
            name=name,
            version=self.row["version"],
            environment=self.environment,
            expires_at=self.row["expires_at"],
        )


# The statements of every write.
_INSERT_VALUE = insert(VALUE_TABLE)
_SET_VALUE = (
    update(VALUE_TABLE).where(
        VALUE_TABLE.c.secret_id == bindparam("w_secret_id"),
        VALUE_TABLE.c.environment == bindparam("w_environment"),
        VALUE_TABLE.c.version == bindparam("w_version"),
    )
    # No values(): the SET clause is made of the columns each execution passes.
)
_INSERT_VERSION = insert(VERSION_TABLE)
_PRUNE_VERSIONS = delete(VERSION_TABLE).where(
    VERSION_TABLE.c.secret_id == bindparam("w_secret_id"),
    VERSION_TABLE.c.environment == bindparam("w_environment"),
    VERSION_TABLE.c.version <= bindparam("w_version"),
)
_UPDATE_SECRET = update(SECRET_TABLE).where(SECRET_TABLE.c.id == bindparam("w_secret_id"))
_SECRET_ROWS = select(SECRET_TABLE).where(SECRET_TABLE.c.id.in_(bindparam("ids", expanding=True)))


# Reads of every request and run (the ORM loads the rows afresh: writes bypass the identity map).
SECRETS_NAMED = select(Secret).where(col(Secret.name).in_(bindparam("names", expanding=True)))
SECRETS_WITH_VALUES = (
    select(Secret, SecretValue)
    .outerjoin(
        SecretValue,
        (col(SecretValue.secret_id) == col(Secret.id))
        & col(SecretValue.environment).in_(bindparam("environments", expanding=True)),
    )
    .where(col(Secret.name).in_(bindparam("names", expanding=True)))
    .execution_options(populate_existing=True)
)
LOAD_FOR_RUN = (
    select(
        SECRET_TABLE.c.id,
        SECRET_TABLE.c.name,
        SECRET_TABLE.c.environment_specific,
        SECRET_TABLE.c.locked,
        SECRET_TABLE.c.status,
        SECRET_TABLE.c.allowed_destinations,
        VALUE_TABLE.c.environment,
        VALUE_TABLE.c.version,
        VALUE_TABLE.c.ciphertext,
        VALUE_TABLE.c.expires_at,
    )
    .select_from(
        SECRET_TABLE.outerjoin(
            VALUE_TABLE,
            (VALUE_TABLE.c.secret_id == SECRET_TABLE.c.id)
            & VALUE_TABLE.c.environment.in_(bindparam("environments", expanding=True)),
        )
    )
    .where(SECRET_TABLE.c.name.in_(bindparam("names", expanding=True)))
)
REFRESH_ENDPOINT = select(SECRET_TABLE.c.refresh_endpoint).where(
    SECRET_TABLE.c.name == bindparam("name")
)
_VERSION_ORIGIN = select(VERSION_TABLE.c.source, VERSION_TABLE.c.run_id).where(
    VERSION_TABLE.c.secret_id == bindparam("secret_id"),
    VERSION_TABLE.c.environment == bindparam("environment"),
    VERSION_TABLE.c.version == bindparam("version"),
)


def store_values(connection: Connection, writes: list[ValueWrite]) -> int | None:
    """Write each value compare-and-set (or first-time insert), then every version row, every
    secret row's changes and the pruning of every history, each kind in one execution. None
    when all is written; else the index of the first write whose value is no longer at its
    `base_version` (stop there: the caller rolls the transaction back).

    Versions count up by one from 1 with every write and are never reused, so the ones to go
    are simply those at or below `version - versions_kept`.
    """
    if not writes:
        return None
    for index, write in enumerate(writes):
        key = {"w_secret_id": write.secret_id, "w_environment": write.environment}
        if write.base_version is None:
            connection.execute(
                _INSERT_VALUE,
                {"secret_id": write.secret_id, "environment": write.environment, **write.row},
            )
        elif (
            connection.execute(
                _SET_VALUE, {**key, "w_version": write.base_version, **write.row}
            ).rowcount
            != 1
        ):
            return index
    # No compare-and-set below: one execution each (executemany) for all the writes.
    connection.execute(
        _INSERT_VERSION,
        [
            {
                "secret_id": write.secret_id,
                "environment": write.environment,
                "version": write.row["version"],
                "ciphertext": write.row["ciphertext"],
                "expires_at": write.row["expires_at"],
                **write.history,
            }
            for write in writes
        ],
    )
    connection.execute(
        _UPDATE_SECRET,
        [{"w_secret_id": write.secret_id, **write.secret_changes} for write in writes],
    )
    connection.execute(
        _PRUNE_VERSIONS,
        [
            {
                "w_secret_id": write.secret_id,
                "w_environment": write.environment,
                "w_version": write.row["version"] - write.versions_kept,
            }
            for write in writes
        ],
    )
    return None


def plan_run_writes(connection: Connection, writes: list[ValueWrite], now: datetime) -> int | None:
    """Plan the next refresh of each of a run's writes on the secret rows as they are now (read
    again here: one may have been reconfigured during the run). None when every secret is
    there; else the index of the first write whose secret was deleted meanwhile."""
    ids = [write.secret_id for write in writes]
    found = connection.execute(_SECRET_ROWS, {"ids": ids}) if ids else ()
    secrets = {row.id: row for row in found}
    for index, write in enumerate(writes):
        secret = secrets.get(write.secret_id)
        if secret is None:
            return index
        timing = ValueTiming(write.row["expires_at"], now)
        write.row["next_refresh_at"] = plan_next_refresh(secret, timing, now)
    return None


async def version_origin(
    session: AsyncSession, secret_id: int, environment: str, version: int
) -> Row[Any] | None:
    """Who wrote one version of a value: (`source`, `run_id`), or None if it is not kept."""
    found = await session.execute(
        _VERSION_ORIGIN, {"secret_id": secret_id, "environment": environment, "version": version}
    )
    return found.one_or_none()
