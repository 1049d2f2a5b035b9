"""The rules of the secrets domain: metadata, encrypted versioned values, history and rollback.

Services only `flush()`; the request's session commits once at the end.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import col

from app.auth.accounts import AccountStore
from app.auth.actor import Actor
from app.auth.permissions import act_as
from app.config import Settings
from app.crypto import Keyring
from app.db import flushed_connection, utcnow
from app.errors import (
    AlreadyExists,
    Conflict,
    InvalidInput,
    NotFound,
    PermissionDenied,
    VersionConflict,
)
from app.events import SecretStatusChanged, emit_after_commit
from app.pipeline.analysis import referenced_secrets
from app.pipeline.schemas import SECRET_NAME_PATTERN, parse_action
from app.secrets.expiry import ValueTiming, plan_next_refresh
from app.secrets.models import ALL_ENVIRONMENTS, Secret, SecretValue, SecretVersion
from app.secrets.schemas import (
    SecretCreate,
    SecretRead,
    SecretUpdate,
    SecretValueRead,
    SecretVersionRead,
    ValueWritten,
)
from app.services.models import Endpoint, Service

SECRET_TABLE = Secret.__table__  # type: ignore[attr-defined]
VALUE_TABLE = SecretValue.__table__  # type: ignore[attr-defined]
VERSION_TABLE = SecretVersion.__table__  # type: ignore[attr-defined]
# Writes that start afresh: whatever went wrong before no longer applies.
FRESH_START_SOURCES = ("manual", "create", "rollback", "recovery")
# Metadata a value's refresh plan depends on: changing any of it re-plans every value.
PLANNED_BY = (
    "refresh_endpoint",
    "refresh_as",
    "refresh_before_expiry_seconds",
    "locked",
    "environment_specific",
)


@dataclass(frozen=True)
class SecretState:
    """What a run needs of a secret's row: read with Core, not loaded as a `Secret` (every run
    reads several, and loading ORM objects costs more than the query)."""

    id: int
    name: str
    environment_specific: bool
    locked: bool
    status: str


@dataclass(frozen=True)
class LoadedSecret:
    """A secret with its current value for one environment, as a run sees it."""

    secret: SecretState
    environment: str
    value: Any
    version: int
    expires_at: datetime | None


def _id(secret: Secret) -> int:
    """The primary key of a stored secret."""
    assert secret.id is not None, "the secret has not been flushed"
    return secret.id


@dataclass
class _ValueWrite:
    """One new version of a value, as `_store_values` writes it."""

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
    ) -> _ValueWrite:
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
            secret_changes=_secret_changes(source, now),
            versions_kept=versions_kept,
        )


def _secret_changes(source: str, now: datetime) -> dict[str, Any]:
    """What a write changes on the secret row: a value set by hand is a fresh start, and one a
    run wrote is a refresh that worked (the runner marks its targets so too), so the plan of
    the next refresh must not see an old status."""
    changes: dict[str, Any] = {"updated_at": now}
    if source in FRESH_START_SOURCES or source == "run":
        changes.update(status="ok", last_error=None, failure_count=0)
    if source == "run":
        changes["last_refreshed_at"] = now
    return changes


def _checked_value(value: Any, expires_at: datetime | None) -> datetime | None:
    """Refuse a null value; the expiry in UTC, as every later read will say it."""
    if value is None:
        raise InvalidInput("a secret value can't be null; delete the secret instead")
    if expires_at is not None and expires_at.tzinfo is not None:
        return expires_at.astimezone(UTC)
    return expires_at


def _check_name(name: str) -> None:
    """No secret can have a name off the pattern; and PostgreSQL would refuse some (NUL)."""
    if not re.fullmatch(SECRET_NAME_PATTERN, name):
        raise _no_secret(name)


def _no_secret(name: str) -> NotFound:
    return NotFound(f"secret {name!r} does not exist")


# The statements of every write, built once: building and keying a statement costs several
# times what executing it does. Parameters prefixed `w_` are the WHERE clause's.
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


# Reads of every request and run, built once likewise (the ORM loads the rows afresh: writes
# bypass the identity map).
_SECRETS_NAMED = select(Secret).where(col(Secret.name).in_(bindparam("names", expanding=True)))
_SECRETS_WITH_VALUES = (
    select(Secret, SecretValue)
    .outerjoin(
        SecretValue,
        (col(SecretValue.secret_id) == col(Secret.id))
        & col(SecretValue.environment).in_(bindparam("environments", expanding=True)),
    )
    .where(col(Secret.name).in_(bindparam("names", expanding=True)))
    .execution_options(populate_existing=True)
)
_LOAD_FOR_RUN = (
    select(
        SECRET_TABLE.c.id,
        SECRET_TABLE.c.name,
        SECRET_TABLE.c.environment_specific,
        SECRET_TABLE.c.locked,
        SECRET_TABLE.c.status,
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
_UPDATE_SECRET = update(SECRET_TABLE).where(SECRET_TABLE.c.id == bindparam("w_secret_id"))
_SECRET_ROWS = select(SECRET_TABLE).where(SECRET_TABLE.c.id.in_(bindparam("ids", expanding=True)))
_REFRESH_ENDPOINT = select(SECRET_TABLE.c.refresh_endpoint).where(
    SECRET_TABLE.c.name == bindparam("name")
)


def _store_values(connection: Connection, writes: list[_ValueWrite]) -> int | None:
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


def _store_run_writes(
    connection: Connection,
    writes: list[_ValueWrite],
    now: datetime,
    then: Callable[[Connection], None] | None,
) -> tuple[int, bool] | None:
    """A run's writes, planned on the secret rows as they are now (read again here: one may
    have been reconfigured during the run), then `then` (the run's own record).

    None when all is written; else (secret id, whether the secret is gone) of the first write
    refused: the secret was deleted, or its value is no longer at the version the run read.
    """
    ids = [write.secret_id for write in writes]
    found = connection.execute(_SECRET_ROWS, {"ids": ids}) if ids else ()
    secrets = {row.id: row for row in found}
    for write in writes:
        secret = secrets.get(write.secret_id)
        if secret is None:
            return write.secret_id, True
        timing = ValueTiming(write.row["expires_at"], now)
        write.row["next_refresh_at"] = plan_next_refresh(secret, timing, now)
    refused = _store_values(connection, writes)
    if refused is not None:
        return writes[refused].secret_id, False
    if then is not None:
        then(connection)
    return None


class SecretStore:
    """Secrets, their values and versions, for one session."""

    def __init__(self, session: AsyncSession, keyring: Keyring, settings: Settings) -> None:
        self.session = session
        self.keyring = keyring
        self.settings = settings

    # --- lookups ---------------------------------------------------------------------------

    async def get(self, name: str) -> Secret:
        """The secret called `name`, or NotFound."""
        _check_name(name)
        found = await self.session.execute(_SECRETS_NAMED, {"names": [name]})
        secret = found.scalar_one_or_none()
        if secret is None:
            raise _no_secret(name)
        return secret

    async def refresh_endpoint(self, name: str) -> str | None:
        """The `refresh_endpoint` of the secret called `name` (None: unbound), or NotFound."""
        _check_name(name)
        connection = await self.session.connection()
        found = (await connection.execute(_REFRESH_ENDPOINT, {"name": name})).one_or_none()
        if found is None:
            raise _no_secret(name)
        endpoint: str | None = found.refresh_endpoint
        return endpoint

    def value_environment(self, secret: Secret, environment: str | None = None) -> str:
        """Where a value of this secret lives: `*` unless it is environment-specific."""
        if not secret.environment_specific:
            if environment is not None:
                raise InvalidInput(
                    f"secret {secret.name!r} holds one value for all environments; "
                    "omit 'environment'"
                )
            return ALL_ENVIRONMENTS
        return environment or self.settings.environment

    async def _connection(self) -> AsyncConnection:
        """The session's connection for Core statements (a secret created in this transaction
        must exist before its value refers to it)."""
        return await flushed_connection(self.session)

    async def _current(self, secret: Secret | SecretState, environment: str) -> SecretValue | None:
        return (
            await self.session.execute(
                select(SecretValue)
                .where(
                    col(SecretValue.secret_id) == secret.id,
                    col(SecretValue.environment) == environment,
                )
                # Compare-and-set updates bypass the identity map: always read the row afresh.
                .execution_options(populate_existing=True)
            )
        ).scalar_one_or_none()

    async def current_version(self, secret: Secret, environment: str | None = None) -> int:
        """The version of the current value in an environment (0: none yet)."""
        current = await self._current(secret, self.value_environment(secret, environment))
        return current.version if current else 0

    async def _with_values(
        self, names: list[str], environment: str | None = None
    ) -> list[tuple[Secret, SecretValue | None]]:
        """The secrets called `names`, each with its current value where `environment` (default:
        this deployment's) says, or None: one query for all of them."""
        wanted = sorted({environment or self.settings.environment, ALL_ENVIRONMENTS})
        found = await self.session.execute(
            _SECRETS_WITH_VALUES, {"names": names, "environments": wanted}
        )
        current: dict[str, tuple[Secret, SecretValue | None]] = {}
        for secret, value in found.all():
            env = self.value_environment(secret, environment)
            matches = value if value is not None and value.environment == env else None
            if matches is not None or secret.name not in current:
                current[secret.name] = (secret, matches)
        return list(current.values())

    async def get_current(
        self, name: str, environment: str | None = None
    ) -> tuple[Secret, SecretValue | None]:
        """The secret called `name` and its current value where `environment` says (one query)."""
        _check_name(name)
        found = await self._with_values([name], environment)
        if not found:
            raise _no_secret(name)
        return found[0]

    async def describe(self, secret: Secret) -> SecretRead:
        """Metadata of a secret for the current environment."""
        environment = self.value_environment(secret)
        query = select(SecretValue).where(col(SecretValue.secret_id) == secret.id)
        values = (await self.session.execute(query)).scalars().all()
        current = next((v for v in values if v.environment == environment), None)
        return SecretRead(
            name=secret.name,
            description=secret.description,
            environment_specific=secret.environment_specific,
            locked=secret.locked,
            refresh_endpoint=secret.refresh_endpoint,
            refresh_as=secret.refresh_as,
            refresh_before_expiry_seconds=secret.refresh_before_expiry_seconds,
            status=secret.status,
            failure_count=secret.failure_count,
            last_error=secret.last_error,
            last_refreshed_at=secret.last_refreshed_at,
            environment=environment,
            has_value=current is not None,
            version=current.version if current else None,
            expires_at=current.expires_at if current else None,
            next_refresh_at=current.next_refresh_at if current else None,
            environments=sorted(v.environment for v in values),
            created_at=secret.created_at,
            updated_at=secret.updated_at,
        )

    async def list_all(self) -> list[SecretRead]:
        """Every secret's metadata, by name."""
        secrets = (
            (await self.session.execute(select(Secret).order_by(col(Secret.name)))).scalars().all()
        )
        return [await self.describe(secret) for secret in secrets]

    # --- metadata --------------------------------------------------------------------------

    async def _endpoint_action(self, refresh_endpoint: str) -> list[dict[str, Any]] | None:
        """The stored action of the endpoint `SLUG/READABLE_ID`, or None when there is none."""
        slug, readable_id = refresh_endpoint.split("/", 1)
        action: list[dict[str, Any]] | None = (
            await self.session.execute(
                select(col(Endpoint.action))
                .join(Service, col(Service.id) == col(Endpoint.service_id))
                .where(col(Service.slug) == slug, col(Endpoint.readable_id) == readable_id)
            )
        ).scalar_one_or_none()
        return action

    async def _check_refresh_endpoint(self, refresh_endpoint: str) -> None:
        if await self._endpoint_action(refresh_endpoint) is None:
            slug, readable_id = refresh_endpoint.split("/", 1)
            raise InvalidInput(
                f"refresh_endpoint {refresh_endpoint!r}: no endpoint {readable_id!r} "
                f"in service {slug!r}"
            )

    async def _check_refresh_as(self, account: str, caller: Actor | None) -> None:
        """Refreshes run as `account`: the caller must hold `act_as:ACCOUNT`, and it must exist.

        `caller` None is the system itself (config as code, the demo), which may name any account.
        """
        permission = act_as(account)
        if caller is not None and not caller.can(permission):
            # Checked first: no one learns which accounts exist without being allowed to use them.
            raise PermissionDenied(
                f"refresh_as {account!r} needs the permission {permission!r}",
                permission=permission,
            )
        try:
            await AccountStore(self.session).service_account(account)
        except NotFound:
            raise InvalidInput(
                f"refresh_as: service account {account!r} does not exist", path="refresh_as"
            ) from None

    async def create(self, data: SecretCreate, actor: str, caller: Actor | None = None) -> Secret:
        """A new secret, with its first value when one is given.

        `caller` is who asks (None: the system); naming a `refresh_as` needs its `act_as`.
        """
        existing = await self.session.execute(
            select(col(Secret.id)).where(col(Secret.name) == data.name)
        )
        if existing.first():
            raise AlreadyExists(f"secret {data.name!r} already exists")
        if data.refresh_endpoint:
            await self._check_refresh_endpoint(data.refresh_endpoint)
        if data.refresh_as:
            await self._check_refresh_as(data.refresh_as, caller)
        if data.value is None and (data.environment or data.expires_at):
            raise InvalidInput("'environment' and 'expires_at' go with a 'value'")
        secret = Secret(
            name=data.name,
            description=data.description,
            environment_specific=data.environment_specific,
            locked=data.locked,
            refresh_endpoint=data.refresh_endpoint,
            refresh_as=data.refresh_as,
            refresh_before_expiry_seconds=data.refresh_before_expiry_seconds,
        )
        self.session.add(secret)
        try:
            await self.session.flush()
        except IntegrityError:
            # Another request created the same name between our check and our insert.
            raise AlreadyExists(f"secret {data.name!r} already exists") from None
        if data.value is not None:
            await self.set_value(
                secret,
                data.value,
                environment=data.environment,
                expires_at=data.expires_at,
                actor=actor,
                source="create",
            )
        return secret

    async def update(
        self, secret: Secret, data: SecretUpdate, caller: Actor | None = None
    ) -> Secret:
        """Change metadata; an `environment_specific` switch needs a secret without values.

        `caller` is who asks (None: the system); naming a `refresh_as` needs its `act_as`.
        """
        changes = data.model_dump(exclude_unset=True)
        if changes.get("refresh_endpoint"):
            await self._check_refresh_endpoint(changes["refresh_endpoint"])
        if changes.get("refresh_as"):
            await self._check_refresh_as(changes["refresh_as"], caller)
        switch = changes.get("environment_specific")
        if switch is not None and switch != secret.environment_specific:
            count = select(func.count()).select_from(SecretValue)
            has_values = (
                await self.session.execute(count.where(col(SecretValue.secret_id) == secret.id))
            ).scalar_one()
            if has_values:
                raise Conflict(
                    f"secret {secret.name!r} already holds values; environment_specific can only "
                    "change on a secret without values (delete and recreate it)"
                )
        for field, value in changes.items():
            if field in ("description", "environment_specific", "locked") and value is None:
                raise InvalidInput(f"{field!r} can't be null")
            setattr(secret, field, value)
        secret.updated_at = utcnow()
        await self.session.flush()
        if any(field in changes for field in PLANNED_BY):
            await self.replan(secret)
        return secret

    async def replan(self, secret: Secret) -> None:
        """Plan the next refresh of every value of the secret afresh (its metadata changed, it
        left `needs_reauth`, or a refresh failed)."""
        now = utcnow()
        query = (
            select(SecretValue)
            .where(col(SecretValue.secret_id) == _id(secret))
            .execution_options(populate_existing=True)
        )
        for value in (await self.session.execute(query)).scalars():
            value.next_refresh_at = plan_next_refresh(secret, value, now)
        await self.session.flush()

    async def delete(self, secret: Secret) -> None:
        """Delete a secret with all its values and history."""
        await self.session.delete(secret)
        await self.session.flush()

    # --- values ----------------------------------------------------------------------------

    def read_value(
        self, secret: Secret, current: SecretValue | None, environment: str | None = None
    ) -> SecretValueRead:
        """The decrypted current value (the only way a value leaves the store)."""
        env = self.value_environment(secret, environment)
        if current is None:
            raise NotFound(
                f"secret {secret.name!r} has no value"
                + (f" in environment {env!r}" if env != ALL_ENVIRONMENTS else "")
                + f"; set one with PUT /v1/secrets/{secret.name}/value"
            )
        return SecretValueRead(
            name=secret.name,
            value=self.keyring.decrypt(current.ciphertext),
            version=current.version,
            expires_at=current.expires_at,
            environment=env,
        )

    async def load_for_run(self, names: set[str]) -> dict[str, LoadedSecret | None]:
        """Secrets a run reads or writes, with their current values in this environment (one
        Core query for all of them)."""
        loaded: dict[str, LoadedSecret | None] = dict.fromkeys(names)
        environments = sorted({self.settings.environment, ALL_ENVIRONMENTS})
        connection = await self.session.connection()
        found = await connection.execute(
            _LOAD_FOR_RUN, {"names": sorted(names), "environments": environments}
        )
        for row in found:
            state = SecretState(row.id, row.name, row.environment_specific, row.locked, row.status)
            environment = (
                self.settings.environment if state.environment_specific else ALL_ENVIRONMENTS
            )
            matches = row.environment == environment
            if not matches and loaded[state.name] is not None:
                continue  # the row of the other environment, after this one's
            loaded[state.name] = LoadedSecret(
                secret=state,
                environment=environment,
                value=self.keyring.decrypt(row.ciphertext) if matches else None,
                version=row.version if matches else 0,
                expires_at=row.expires_at if matches else None,
            )
        return loaded

    async def set_value(
        self,
        secret: Secret,
        value: Any,
        *,
        environment: str | None = None,
        expires_at: datetime | None = None,
        actor: str | None,
        source: str,
        run_id: str | None = None,
        expected_version: int | None = None,
    ) -> ValueWritten:
        """Write a new version; with `expected_version`, only if the current one is still that."""
        expires_at = _checked_value(value, expires_at)
        env = self.value_environment(secret, environment)
        ciphertext = self.keyring.encrypt(value)
        now = utcnow()
        if expected_version:
            # A compare-and-set on the version the caller read (a recovery): no need to read it
            # again, the update below only matches that version.
            current_version, exists = expected_version, True
        else:
            current = await self._current(secret, env)
            current_version = current.version if current else 0
            exists = current is not None
            if expected_version is not None and expected_version != current_version:
                raise self._changed_during_run(secret, expected_version, current_version)
        version = current_version + 1
        write = _ValueWrite.of(
            _id(secret),
            env,
            base_version=current_version if exists else None,
            version=version,
            ciphertext=ciphertext,
            expires_at=expires_at,
            next_refresh_at=None,  # planned below, on the secret as the write leaves it
            source=source,
            run_id=run_id,
            actor=actor,
            now=now,
            versions_kept=self.settings.versions_kept,
        )
        # Core statements on the session's connection: the unit of work would cost more than
        # the statements themselves (a run's writes take `store_run_writes`, the same way).
        connection = await self._connection()
        if source in FRESH_START_SOURCES and secret.status != "ok":
            # A person (or a recovery) set it right: whoever listens hears it has recovered.
            emit_after_commit(
                self.session,
                SecretStatusChanged(secret.name, secret.status, "ok", 0, None, run_id, now),
            )
        for key, new_value in write.secret_changes.items():
            # Stored by the UPDATE below, not by a flush.
            set_committed_value(secret, key, new_value)
        write.row["next_refresh_at"] = plan_next_refresh(secret, ValueTiming(expires_at, now), now)
        try:
            # One greenlet for the four statements: each awaited call costs more than SQLite.
            stored = await connection.run_sync(_store_values, [write]) is None
        except IntegrityError:
            # Two first writes raced on the unique (secret, environment) row.
            stored = False
        if not stored:
            if expected_version:
                now_at = await self._current(secret, env)
                raise self._changed_during_run(
                    secret, expected_version, now_at.version if now_at else 0
                )
            raise VersionConflict(
                f"secret {secret.name!r} was written concurrently; nothing was written"
            )
        if source in FRESH_START_SOURCES:
            await self._resume_dependents(secret)
            await self.session.flush()
        return ValueWritten(
            name=secret.name, version=version, environment=env, expires_at=expires_at
        )

    async def store_run_writes(
        self,
        writes: Sequence[tuple[LoadedSecret, Any, datetime | None]],
        *,
        actor: str,
        run_id: str,
        then: Callable[[Connection], None] | None = None,
    ) -> dict[str, ValueWritten]:
        """Store every write of a run, each compare-and-set on the version the run read, then
        `then` (the run's record): in one greenlet, on Core statements, since every refresh
        passes here. What `set_value` does for a run's write, for all of them at once.

        (loaded secret, value, expires_at) per write; VersionConflict if a value changed during
        the run, NotFound if a secret was deleted meanwhile (nothing is written then).
        """
        now = utcnow()
        planned = [
            _ValueWrite.of(
                loaded.secret.id,
                loaded.environment,
                base_version=loaded.version or None,
                version=loaded.version + 1,
                ciphertext=self.keyring.encrypt(value),
                expires_at=_checked_value(value, expires_at),
                next_refresh_at=None,  # planned on the secret row as it is now
                source="run",
                run_id=run_id,
                actor=actor,
                now=now,
                versions_kept=self.settings.versions_kept,
            )
            for loaded, value, expires_at in writes
        ]
        connection = await self._connection()
        by_id = {
            write.secret_id: loaded for (loaded, _, _), write in zip(writes, planned, strict=True)
        }
        try:
            refused = await connection.run_sync(_store_run_writes, planned, now, then)
        except IntegrityError:
            # A first value another writer inserted meanwhile (one row per secret/environment).
            raise VersionConflict(
                "a secret the run writes was written concurrently; nothing was written"
            ) from None
        if refused is not None:
            secret_id, gone = refused
            secret = by_id[secret_id].secret
            if gone:
                raise _no_secret(secret.name)
            now_at = await self._current(secret, by_id[secret_id].environment)
            raise self._changed_during_run(
                secret, by_id[secret_id].version, now_at.version if now_at else 0
            )
        return {
            loaded.secret.name: ValueWritten(
                name=loaded.secret.name,
                version=write.row["version"],
                environment=write.environment,
                expires_at=write.row["expires_at"],
            )
            for (loaded, _, _), write in zip(writes, planned, strict=True)
        }

    @staticmethod
    def _changed_during_run(
        secret: Secret | SecretState, expected: int, current: int
    ) -> VersionConflict:
        return VersionConflict(
            f"secret {secret.name!r} changed during the run (version {expected} became "
            f"{current}); nothing was written"
        )

    async def _resume_dependents(self, secret: Secret) -> None:
        """A new value by hand (say, a refresh token after consent) lets the secrets refreshed
        through an endpoint that uses it leave `needs_reauth`."""
        waiting = (
            (
                await self.session.execute(
                    select(Secret).where(
                        col(Secret.status) == "needs_reauth",
                        col(Secret.refresh_endpoint).is_not(None),
                        col(Secret.id) != secret.id,
                    )
                )
            )
            .scalars()
            .all()
        )
        for dependent in waiting:
            assert dependent.refresh_endpoint is not None
            action = await self._endpoint_action(dependent.refresh_endpoint)
            if action is not None and secret.name in referenced_secrets(parse_action(action)):
                emit_after_commit(
                    self.session,
                    SecretStatusChanged(
                        dependent.name, dependent.status, "ok", 0, None, None, utcnow()
                    ),
                )
                dependent.status = "ok"
                dependent.failure_count = 0
                dependent.last_error = None
                await self.replan(dependent)

    async def versions(
        self, secret: Secret, environment: str | None = None
    ) -> list[SecretVersionRead]:
        """History of one environment's value, newest first (no values)."""
        env = self.value_environment(secret, environment)
        current = await self._current(secret, env)
        rows = (
            (
                await self.session.execute(
                    select(SecretVersion)
                    .where(
                        col(SecretVersion.secret_id) == secret.id,
                        col(SecretVersion.environment) == env,
                    )
                    .order_by(col(SecretVersion.version).desc())
                )
            )
            .scalars()
            .all()
        )
        return [
            SecretVersionRead(
                version=row.version,
                environment=env,
                created_at=row.created_at,
                expires_at=row.expires_at,
                source=row.source,
                run_id=row.run_id,
                actor=row.actor,
                current=current is not None and current.version == row.version,
            )
            for row in rows
        ]

    async def rollback(
        self, secret: Secret, version: int, environment: str | None, actor: str
    ) -> ValueWritten:
        """Make an earlier version current again, as a new version."""
        env = self.value_environment(secret, environment)
        old = (
            await self.session.execute(
                select(SecretVersion).where(
                    col(SecretVersion.secret_id) == secret.id,
                    col(SecretVersion.environment) == env,
                    col(SecretVersion.version) == version,
                )
            )
        ).scalar_one_or_none()
        if old is None:
            raise NotFound(f"secret {secret.name!r} has no version {version} (see its versions)")
        return await self.set_value(
            secret,
            self.keyring.decrypt(old.ciphertext),
            environment=environment,
            expires_at=old.expires_at,
            actor=actor,
            source="rollback",
        )


def expires_within(expires_at: datetime | None, seconds: float) -> bool:
    """Whether a value expiring at `expires_at` expires within `seconds` from now, or already has
    (False without an expiry)."""
    return expires_at is not None and expires_at <= utcnow() + timedelta(seconds=seconds)
