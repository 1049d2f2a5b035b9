"""The rules of the secrets domain: metadata, encrypted versioned values, history and rollback.

Services only `flush()`; the request's session commits once at the end.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import col

from app.auth.accounts import AccountStore
from app.auth.actor import Actor
from app.auth.permissions import act_as
from app.config import Settings
from app.crypto import Keyring
from app.db import flushed_connection, one_or_not_found, utcnow
from app.errors import (
    AlreadyExists,
    Conflict,
    InvalidInput,
    NotFound,
    PermissionDenied,
    VersionConflict,
)
from app.pipeline.analysis import referenced_secrets
from app.pipeline.schemas import SECRET_NAME_PATTERN, parse_action
from app.secrets import health
from app.secrets.expiry import ValueTiming, plan_next_refresh
from app.secrets.health import FRESH_START_SOURCES
from app.secrets.models import ALL_ENVIRONMENTS, Secret, SecretValue, SecretVersion
from app.secrets.rules import CompanionUse, companion_problem
from app.secrets.schemas import (
    SecretCreate,
    SecretRead,
    SecretSaved,
    SecretUpdate,
    SecretValueRead,
    SecretVersionRead,
    ValueWritten,
)
from app.secrets.sql import (
    LOAD_FOR_RUN,
    REFRESH_ENDPOINT,
    SECRETS_NAMED,
    SECRETS_WITH_VALUES,
    LoadedSecret,
    SecretState,
    ValueWrite,
    store_values,
)
from app.services.models import Endpoint, Service

logger = logging.getLogger("tokenfarm.secrets")

__all__ = ["LoadedSecret", "SecretState", "SecretStore", "ValueTiming", "expires_within"]

# Metadata a value's refresh plan depends on: changing any of it re-plans every value.
PLANNED_BY = (
    "refresh_endpoint",
    "refresh_as",
    "refresh_before_expiry_seconds",
    "locked",
    "environment_specific",
)


def _id(secret: Secret) -> int:
    """The primary key of a stored secret."""
    assert secret.id is not None, "the secret has not been flushed"
    return secret.id


def checked_value(value: Any, expires_at: datetime | None) -> datetime | None:
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


def refuse_companion(name: str, companion_of: int | None, use: CompanionUse) -> None:
    """Raise when a route would `use` a hidden companion: 403 to a read, 409 otherwise."""
    problem = companion_problem(name, companion_of, use)
    if problem is None:
        return
    if use is CompanionUse.READ:
        raise PermissionDenied(problem, hidden_companion=True)
    raise Conflict(problem, hidden_companion=True)


def reconnect_hint(secret: Secret, *, has_value: bool) -> str | None:
    """Where to reconnect a connected secret that needs a person: refused refreshes
    (`needs_reauth`) or no token (never connected, or disconnected)."""
    if secret.provider is None or (secret.status != "needs_reauth" and has_value):
        return None
    return f"POST /v1/secrets/{secret.name}/connect-links"


def _no_secret(name: str) -> NotFound:
    return NotFound(f"secret {name!r} does not exist")


class SecretStore:
    """Secrets, their values and versions, for one session."""

    def __init__(self, session: AsyncSession, keyring: Keyring, settings: Settings) -> None:
        self.session = session
        self.keyring = keyring
        self.settings = settings

    # --- lookups ---------------------------------------------------------------------------

    async def get(self, name: str, use: CompanionUse | None = None) -> Secret:
        """The secret called `name`, or NotFound; with `use`, refused when it is a hidden
        companion (a route about to do that with it: 403 for a read, else 409)."""
        _check_name(name)
        secret: Secret = await one_or_not_found(
            self.session, SECRETS_NAMED, f"secret {name!r}", {"names": [name]}
        )
        if use is not None:
            refuse_companion(secret.name, secret.companion_of, use)
        return secret

    async def refresh_endpoint(self, name: str) -> str | None:
        """The `refresh_endpoint` of the secret called `name` (None: unbound), or NotFound."""
        _check_name(name)
        connection = await self.session.connection()
        found = (await connection.execute(REFRESH_ENDPOINT, {"name": name})).one_or_none()
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

    async def _last_version(self, secret: Secret, environment: str) -> int:
        """The highest version in a value's history (0: none)."""
        query = select(func.max(SecretVersion.version)).where(
            col(SecretVersion.secret_id) == _id(secret),
            col(SecretVersion.environment) == environment,
        )
        return int((await self.session.execute(query)).scalar_one() or 0)

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
            SECRETS_WITH_VALUES, {"names": names, "environments": wanted}
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
            allowed_destinations=secret.allowed_destinations,
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
            provider=secret.provider,
            scopes=secret.scopes,
            connected_by=secret.connected_by,
            reconnect=reconnect_hint(secret, has_value=current is not None),
        )

    async def list_all(self) -> list[SecretRead]:
        """Every secret's metadata, by name; hidden companions are not listed."""
        query = select(Secret).where(col(Secret.companion_of).is_(None)).order_by(col(Secret.name))
        secrets = (await self.session.execute(query)).scalars().all()
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
            allowed_destinations=data.allowed_destinations,
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

    async def saved(self, secret: Secret) -> SecretSaved:
        """A secret's metadata after a create or change, with warnings (logged too): one that
        declares no allowed destinations may be sent anywhere by a run."""
        warnings = []
        if secret.allowed_destinations is None:
            warnings.append(
                f"secret {secret.name!r} declares no allowed_destinations, so a run may send its "
                "value (or anything made from it) to any origin; set allowed_destinations to the "
                'origins that should receive it (e.g. ["https://auth.example.com"])'
            )
            logger.warning("secret %s declares no allowed_destinations", secret.name)
        described = await self.describe(secret)
        return SecretSaved(**described.model_dump(), warnings=warnings)

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
            LOAD_FOR_RUN, {"names": sorted(names), "environments": environments}
        )
        for row in found:
            allowed = row.allowed_destinations
            state = SecretState(
                row.id,
                row.name,
                row.environment_specific,
                row.locked,
                row.status,
                tuple(allowed) if allowed is not None else None,
            )
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
        expires_at = checked_value(value, expires_at)
        env = self.value_environment(secret, environment)
        ciphertext = self.keyring.encrypt(value)
        now = utcnow()
        if expected_version:
            # A compare-and-set on the version the caller read (a recovery): no need to read it
            # again, the update below only matches that version.
            current_version, exists = expected_version, True
        else:
            current = await self._current(secret, env)
            exists = current is not None
            # A value cleared by a disconnect (app/connect) left its history: go on numbering.
            current_version = current.version if current else await self._last_version(secret, env)
            now_version = current.version if current else 0
            if expected_version is not None and expected_version != now_version:
                raise self._changed_during_run(secret, expected_version, now_version)
        version = current_version + 1
        write = ValueWrite.of(
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
        # the statements themselves (a run's writes take the same statements, in the runner).
        connection = await self._connection()
        if source in FRESH_START_SOURCES:
            # A person (or a recovery) set it right: whoever listens hears it has recovered.
            health.announce_healthy(self.session, secret.name, secret.status, run_id, now)
        for key, new_value in write.secret_changes.items():
            # Stored by the UPDATE below, not by a flush.
            set_committed_value(secret, key, new_value)
        write.row["next_refresh_at"] = plan_next_refresh(secret, ValueTiming(expires_at, now), now)
        try:
            # One greenlet for the four statements: each awaited call costs more than SQLite.
            stored = await connection.run_sync(store_values, [write]) is None
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

    async def run_write_refused(
        self, loaded: LoadedSecret, gone: bool
    ) -> NotFound | VersionConflict:
        """Why a run's write to `loaded` was refused: the secret was deleted (`gone`), or its value
        is no longer at the version the run read."""
        if gone:
            return _no_secret(loaded.secret.name)
        now_at = await self._current(loaded.secret, loaded.environment)
        return self._changed_during_run(
            loaded.secret, loaded.version, now_at.version if now_at else 0
        )

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
                health.mark_healthy(self.session, dependent)
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
