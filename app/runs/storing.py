"""Storing a run's outcome: the runner's one storing transaction, and what a failure leaves.

A run that succeeded first keeps the upstream's answer encrypted in its run row (so no rotated
token is lost if the process dies or the database fails now), then stores every write
compare-and-set on the version the run began from, together with its run record, in one
transaction: the runner opens it and calls, in order, the secrets' statements
(app/secrets/sql.py) and the run record's (app/runs/record.py). No store runs another domain's SQL.
A run that failed marks its targets (app/secrets/health.py) and records the failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.crypto import Keyring
from app.db import utcnow
from app.errors import (
    RunFailed,
    StorageFailed,
    Superseded,
    TokenfarmError,
    UpstreamFailed,
    VersionConflict,
)
from app.runs.flights import adopt, changed_versions
from app.runs.record import RunOutcome, RunRecord
from app.secrets import health, sql
from app.secrets.rules import why_runs_cannot_write
from app.secrets.schemas import ValueWritten
from app.secrets.sql import LoadedSecret, ValueWrite
from app.secrets.store import SecretStore, checked_value

logger = logging.getLogger("tokenfarm.run")


class RunStorage:
    """Stores what runs ended with; one per runner."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        keyring: Keyring,
        settings: Settings,
    ) -> None:
        self.session_factory = session_factory
        self.keyring = keyring
        self.settings = settings

    async def finish(self, record: RunRecord, error: TokenfarmError | None) -> RunOutcome:
        """Store the writes (all or none) with the run record, or record the failure."""
        ctx = record.ctx
        outcome = RunOutcome(run_id=ctx.run_id, status="succeeded", http_status=200)
        kept = False  # whether the encrypted writes are safely in the run row
        try:
            if error is None and ctx.writes:
                # First keep what the upstream answered, so that no rotated token is lost if
                # the process dies or the database fails before the writes are stored.
                async with self.session_factory() as session, session.begin():
                    connection = await session.connection()
                    await connection.run_sync(record.keep_op(outcome, self.keyring))
                kept = True
            if error is None:
                try:
                    outcome.response = ctx.redactor.value(ctx.result)
                    async with self.session_factory() as session, session.begin():
                        outcome.stored = await self._store_writes(session, record, outcome, kept)
                    return outcome
                except (TokenfarmError, SQLAlchemyError) as exc:
                    # The transaction rolled back: none of this run's writes stayed.
                    outcome.stored = {}
                    error = self._storing_failed(ctx.run_id, exc, kept)
            elif isinstance(error, UpstreamFailed) and error.oauth_error == "invalid_grant":
                adopted_or_error = await self._lost_race(record)
                if isinstance(adopted_or_error, RunOutcome):
                    return adopted_or_error
                error = adopted_or_error or error
            outcome.status, outcome.http_status, outcome.error = "failed", error.status_code, error
            outcome.error_body = ctx.redactor.value(error.to_body())
            async with self.session_factory() as session, session.begin():
                if isinstance(error, RunFailed):
                    # Only a failure of the refresh itself marks the secret: not a refused
                    # pre-flight (a caller without permission must not flag it) nor a lost
                    # compare-and-set (someone else wrote it).
                    await self._mark_targets_failed(session, record, error)
                await record.save(session, outcome, kept)
        except SQLAlchemyError as exc:
            logger.error("run %s: storing the outcome failed: %s", ctx.run_id, type(exc).__name__)
            failure = self._storing_failed(ctx.run_id, exc, kept)
            outcome = RunOutcome(
                run_id=ctx.run_id,
                status="failed",
                http_status=failure.status_code,
                error=failure,
                error_body=ctx.redactor.value(failure.to_body()),
            )
        return outcome

    @staticmethod
    def _storing_failed(run_id: str, exc: Exception, kept: bool) -> TokenfarmError:
        """The error of a run whose writes could not be stored, saying how to recover them: a
        new error (of the kind of a domain error caught, which stays its cause)."""
        if isinstance(exc, TokenfarmError):
            message, extra = exc.message, dict(exc.extra)
        else:
            message, extra = "the run's outcome could not be stored; nothing was written", {}
        if kept:
            message += (
                f"; the upstream's answer is kept encrypted in run {run_id}: write it with "
                f"`tokenfarm runs recover {run_id}` or POST /v1/runs/{run_id}/recover"
            )
            extra["recoverable"] = True
        if not isinstance(exc, TokenfarmError):
            return StorageFailed(message, **extra)
        # A copy that keeps the kind's own attributes (status, error class), with the message.
        error = type(exc).__new__(type(exc), message)
        error.__dict__.update(exc.__dict__, message=message, extra=extra)
        error.__cause__ = exc
        return error

    async def _lost_race(self, record: RunRecord) -> RunOutcome | TokenfarmError | None:
        """After `invalid_grant`: did a secret the run read change since it began?

        Then the grant was spent or replaced by someone else, not revoked: adopt the result of a
        run that refreshed the targets meanwhile, else report the race without marking anything.
        None: nothing changed, the grant really was refused.
        """
        prepared = record.prepared
        async with self.session_factory() as session:
            store = SecretStore(session, self.keyring, self.settings)
            now = await store.load_for_run(set(prepared.secrets))
        changed = changed_versions(prepared.secrets, now, set(prepared.secrets))
        if not changed:
            return None
        adopted = await adopt(self.session_factory, prepared, now)
        if adopted is not None:
            return adopted
        return Superseded(
            f"{', '.join(sorted(changed))} changed while the run was in flight and the token "
            "endpoint refused the grant the run began with (invalid_grant); try again",
            secrets=sorted(changed),
        )

    async def _store_writes(
        self, session: AsyncSession, record: RunRecord, outcome: RunOutcome, kept: bool
    ) -> dict[str, ValueWritten]:
        """Write every pending secret compare-and-set on the version the run started from, and
        record the run as succeeded (or forget its kept answer if it isn't logged): in one
        transaction and one greenlet, on Core statements, since every refresh passes here.

        VersionConflict if a value changed during the run, NotFound if a secret was deleted
        meanwhile (nothing is written then).
        """
        ctx = record.ctx
        written = sorted(ctx.writes)
        now = utcnow()
        loaded_writes: list[LoadedSecret] = []
        writes: list[ValueWrite] = []
        for name, write in ctx.writes.items():
            loaded = record.prepared.secrets[name]
            assert loaded is not None  # the pre-flight check guarantees it
            loaded_writes.append(loaded)
            writes.append(
                ValueWrite.of_run(
                    loaded,
                    self.keyring.encrypt(write.value),
                    checked_value(write.value, write.expires_at),
                    run_id=ctx.run_id,
                    actor=ctx.actor.label,
                    now=now,
                    versions_kept=self.settings.versions_kept,
                )
            )
        connection = await session.connection()
        try:
            refused = await connection.run_sync(
                _store_run, writes, now, record.stored_op(outcome, kept, written)
            )
        except IntegrityError:
            # A first value another writer inserted meanwhile (one row per secret/environment).
            raise VersionConflict(
                "a secret the run writes was written concurrently; nothing was written"
            ) from None
        if refused is not None:
            index, gone = refused
            store = SecretStore(session, self.keyring, self.settings)
            raise await store.run_write_refused(loaded_writes[index], gone)
        for loaded in sorted(loaded_writes, key=lambda loaded: loaded.secret.name):
            health.announce_healthy(
                session, loaded.secret.name, loaded.secret.status, ctx.run_id, utcnow()
            )
        return {
            loaded.secret.name: write.written(loaded.secret.name)
            for loaded, write in zip(loaded_writes, writes, strict=True)
        }

    async def _mark_targets_failed(
        self, session: AsyncSession, record: RunRecord, error: RunFailed
    ) -> None:
        """Note the failure on every secret the run meant to write (its value stays as it was)."""
        prepared = record.prepared
        store = SecretStore(session, self.keyring, self.settings)
        revoked = isinstance(error, UpstreamFailed) and error.oauth_error == "invalid_grant"
        # Stored redacted: the column is plain text, and an upstream may echo what it was sent.
        message = record.ctx.redactor.text(error.message)
        summary = health.failure_summary(error.error_type, error.error_class, message)
        for name in sorted(prepared.target_names):
            loaded = prepared.secrets.get(name)
            if loaded is None or why_runs_cannot_write(
                environment_specific=loaded.secret.environment_specific,
                locked=loaded.secret.locked,
            ):
                continue
            health.mark_failed(
                session, await store.get(name), summary, revoked=revoked, run_id=record.ctx.run_id
            )


def _store_run(
    connection: Connection,
    writes: list[ValueWrite],
    now: datetime,
    record: Callable[[Connection], None] | None,
) -> tuple[int, bool] | None:
    """The storing transaction's statements, in order, in one greenlet: the secrets' (each
    write planned on its secret row as it is now, then stored compare-and-set with its
    history), then the run record's. None when all is stored; else (index of the first write
    refused, whether its secret is gone): the caller rolls the transaction back."""
    gone = sql.plan_run_writes(connection, writes, now)
    if gone is not None:
        return gone, True
    refused = sql.store_values(connection, writes)
    if refused is not None:
        return refused, False
    if record is not None:
        record(connection)
    return None
