"""Storing a run's outcome: the runner's one storing transaction, and what a failure leaves.

Every upstream answer a run that writes secrets accepts is kept the moment it arrives, before
any node reads it (`keep_answer`, the run context's answer sink): encrypted in the run row (the
recovery slot) or, when the database can't take it, in the local spool (app/runs/spool.py). So
no rotated token is lost if the process dies or the database fails from then on: what remains is
the time of that one durable write. A run that succeeded then stores every write compare-and-set
on the version the run began from, together with its run record, in one transaction: the runner
opens it and calls, in order, the secrets' statements (app/secrets/sql.py) and the run record's
(app/runs/record.py). No store runs another domain's SQL.
A run that failed marks its targets (app/secrets/health.py) and records the failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.crypto import Keyring
from app.db import utcnow
from app.errors import (
    DatabaseUnavailable,
    RunFailed,
    StorageFailed,
    Superseded,
    TokenfarmError,
    UpstreamFailed,
    VersionConflict,
    is_database_failure,
    is_database_outage,
)
from app.runs.flights import adopt, changed_versions
from app.runs.lost_answers import explain_spent_grant, lost_answer_run
from app.runs.record import RunOutcome, RunRecord
from app.runs.spool import Spool
from app.secrets import health, sql
from app.secrets.rules import why_runs_cannot_write
from app.secrets.schemas import ValueWritten
from app.secrets.sql import LoadedSecret, ValueWrite
from app.secrets.store import SecretStore, checked_value

if TYPE_CHECKING:
    from app.outbound import OutboundResponse

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
        self.spool = Spool(settings.data_dir / "spool", keyring)
        # Runs of this process between their start and their stored outcome.
        self.in_flight: set[str] = set()
        # run id -> targets of a run the process that ran it left `storing` (found at start-up):
        # no refresh of them starts until its answer is recovered (app/runtime.py).
        self.orphans: dict[str, set[str]] = {}
        # Kept answers this process has written by replaying them: a run loaded before one was
        # loads again in its turn (it would present the grant the answer replaced).
        self.replays = 0

    def pending(self, secrets: set[str]) -> list[str]:
        """Runs whose kept answer, not yet written, rotates one of `secrets`: a refresh of them
        would present the refresh token that answer replaced."""
        orphans = [run_id for run_id, names in self.orphans.items() if names & secrets]
        return sorted(set(self.spool.pending(secrets)) | set(orphans))

    def pending_targets(self) -> set[str]:
        """Every secret some kept answer, not yet written, rotates."""
        names = set(self.spool.pending_names())
        for targets in self.orphans.values():
            names |= targets
        return names

    async def keep_answer(self, record: RunRecord, response: OutboundResponse) -> None:
        """Keep an upstream answer durably before the run reads it: in the run row, or, when the
        database can't take it, in the local spool. When neither can, the run goes on (and
        stores as it would have); only that is logged."""
        arrived = time.perf_counter()
        record.add_answer(response)
        payload = record.answers_payload()
        if record.kept_in != "spool":
            try:
                ciphertext = self.keyring.encrypt(payload)
                async with self.session_factory() as session, session.begin():
                    connection = await session.connection()
                    await connection.run_sync(record.keep_answers_op(ciphertext))
                record.kept_in = "slot"
                # The window a crash could still lose the answer in (docs/operations.md).
                logger.debug(
                    "run %s: answer kept in %.1f ms",
                    record.ctx.run_id,
                    (time.perf_counter() - arrived) * 1000,
                )
                return
            except Exception as exc:
                if not is_database_failure(exc):
                    raise
                logger.warning(
                    "run %s: the database can't keep the answer (%s); spooling it",
                    record.ctx.run_id,
                    type(exc).__name__,
                )
        try:
            await asyncio.to_thread(self.spool.put, record.ctx.run_id, payload)
            record.kept_in = "spool"
            logger.debug(
                "run %s: answer spooled in %.1f ms",
                record.ctx.run_id,
                (time.perf_counter() - arrived) * 1000,
            )
        except OSError as exc:
            logger.error(
                "run %s: the answer could not be kept, neither in the database nor in the spool "
                "(%s)",
                record.ctx.run_id,
                type(exc).__name__,
            )

    async def finish(self, record: RunRecord, error: TokenfarmError | None) -> RunOutcome:
        """Store the writes (all or none) with the run record, or record the failure."""
        ctx = record.ctx
        outcome = RunOutcome(run_id=ctx.run_id, status="succeeded", http_status=200)
        kept = record.kept_in == "slot"  # whether the answers are safely in the run row
        failed_before_storing = error is not None
        try:
            if error is None and ctx.writes and record.kept_in is None:
                # Writes made of no upstream answer (nothing was kept as it arrived): keep them
                # first, so that storing them can fail without losing them.
                async with self.session_factory() as session, session.begin():
                    connection = await session.connection()
                    await connection.run_sync(record.keep_op(outcome, self.keyring))
                kept = True
            if error is None:
                try:
                    outcome.response = ctx.redactor.value(ctx.result)
                    async with self.session_factory() as session, session.begin():
                        outcome.stored = await self._store_writes(session, record, outcome, kept)
                    self._unspool(record)
                    return outcome
                except Exception as exc:
                    if not (isinstance(exc, TokenfarmError) or is_database_failure(exc)):
                        raise
                    # The transaction rolled back: none of this run's writes stayed.
                    outcome.stored = {}
                    if is_database_outage(exc):
                        await self._spool_kept(record)
                    error = self._storing_failed(ctx.run_id, exc, kept, record.kept_in == "spool")
            elif isinstance(error, UpstreamFailed) and error.oauth_error == "invalid_grant":
                adopted_or_error = await self._lost_race(record)
                if isinstance(adopted_or_error, RunOutcome):
                    return adopted_or_error
                if adopted_or_error is None:
                    await self._explain_if_spent_by_lost_answer(record, error)
                error = adopted_or_error or error
            outcome.status, outcome.http_status, outcome.error = "failed", error.status_code, error
            outcome.error_body = ctx.redactor.value(error.to_body())
            if failed_before_storing:
                # The action failed after an answer was kept: its writes are void, as every
                # write of a failed run is, so the kept answer goes too.
                self._unspool(record)
            async with self.session_factory() as session, session.begin():
                if isinstance(error, RunFailed):
                    # Only a failure of the refresh itself marks the secret: not a refused
                    # pre-flight (a caller without permission must not flag it) nor a lost
                    # compare-and-set (someone else wrote it).
                    await self._mark_targets_failed(session, record, error)
                await record.save(session, outcome, kept, drop_kept=failed_before_storing)
        except Exception as exc:
            if not is_database_failure(exc):
                raise
            logger.error("run %s: storing the outcome failed: %s", ctx.run_id, type(exc).__name__)
            if not failed_before_storing and is_database_outage(exc):
                await self._spool_kept(record)
            failure = self._storing_failed(ctx.run_id, exc, kept, record.kept_in == "spool")
            outcome = RunOutcome(
                run_id=ctx.run_id,
                status="failed",
                http_status=failure.status_code,
                error=failure,
                error_body=ctx.redactor.value(failure.to_body()),
            )
        return outcome

    def _unspool(self, record: RunRecord) -> None:
        """Forget the run's spooled answer: its writes are stored (or void)."""
        if record.kept_in == "spool":
            self.spool.remove(record.ctx.run_id)

    async def _spool_kept(self, record: RunRecord) -> None:
        """Storing met a database outage: the answers kept in the run row go to the spool too,
        so that they are written when the database is back, and no refresh spends the grant they
        replaced meanwhile."""
        if record.kept_in != "slot" or not record.ctx.writes:
            return
        try:
            await asyncio.to_thread(self.spool.put, record.ctx.run_id, record.answers_payload())
            record.kept_in = "spool"
        except OSError as exc:
            logger.error("run %s: spooling failed (%s)", record.ctx.run_id, type(exc).__name__)

    @staticmethod
    def _storing_failed(run_id: str, exc: Exception, kept: bool, spooled: bool) -> TokenfarmError:
        """The error of a run whose writes could not be stored, saying how to recover them: a
        new error (of the kind of a domain error caught, which stays its cause)."""
        if isinstance(exc, TokenfarmError):
            message, extra = exc.message, dict(exc.extra)
        elif is_database_outage(exc):
            message, extra = "the database is unavailable; nothing was written", {}
        else:
            message, extra = "the run's outcome could not be stored; nothing was written", {}
        if spooled:
            message += (
                f"; the upstream's answer is kept encrypted in this replica's spool (run "
                f"{run_id}) and is written as soon as the database is back; until then this "
                "secret is not refreshed again"
            )
            extra["recoverable"] = True
        elif kept:
            message += (
                f"; the upstream's answer is kept encrypted in run {run_id}: write it with "
                f"`tokenfarm runs recover {run_id}` or POST /v1/runs/{run_id}/recover"
            )
            extra["recoverable"] = True
        if not isinstance(exc, TokenfarmError):
            if is_database_outage(exc):
                return DatabaseUnavailable(message, **extra)
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

    async def _explain_if_spent_by_lost_answer(
        self, record: RunRecord, error: UpstreamFailed
    ) -> None:
        """A refused grant after an earlier refresh of the same targets failed ambiguously:
        say that its lost answer probably spent the refresh token (app/runs/lost_answers.py)."""
        async with self.session_factory() as session:
            store = SecretStore(session, self.keyring, self.settings)
            lost_run_id = await lost_answer_run(store, session, self._markable_targets(record))
        if lost_run_id is not None:
            explain_spent_grant(error, lost_run_id)

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

    @staticmethod
    def _markable_targets(record: RunRecord) -> list[str]:
        """The secrets a failure of the run marks: those it meant to write that runs may."""
        prepared = record.prepared
        names = []
        for name in sorted(prepared.target_names):
            loaded = prepared.secrets.get(name)
            if loaded is not None and not why_runs_cannot_write(
                environment_specific=loaded.secret.environment_specific,
                locked=loaded.secret.locked,
            ):
                names.append(name)
        return names

    async def _mark_targets_failed(
        self, session: AsyncSession, record: RunRecord, error: RunFailed
    ) -> None:
        """Note the failure on every secret the run meant to write (its value stays as it was)."""
        store = SecretStore(session, self.keyring, self.settings)
        revoked = isinstance(error, UpstreamFailed) and error.oauth_error == "invalid_grant"
        # Stored redacted: the column is plain text, and an upstream may echo what it was sent.
        message = record.ctx.redactor.text(error.message)
        summary = health.failure_summary(error.error_type, error.error_class, message)
        for name in self._markable_targets(record):
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
