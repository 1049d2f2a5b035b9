"""Writing what a run's upstream answered when storing it failed or the process died first.

The run row keeps the upstream's answers encrypted (`run.recovery`) from the moment they arrived
until the run's writes are stored (app/runs/storing.py `keep_answer`); when the database can't
take them they wait in the local spool (app/runs/spool.py), which `replay_spool` moves into the run
row once the database is back. `Recovery.recover` replays the kept answers through the action as
it ran (nothing is sent: each web request gets its kept answer) and writes what the action would
have written as new versions, refusing when a secret has changed since the run began (someone
refreshed or set it: recovering would overwrite a newer value) unless forced, and while the run
may still be in flight. A write this run already stored is not written again (recovering is
idempotent). Rows kept before answers were (`{"writes": [...]}`) are written as they are.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from app.auth.actor import Actor
from app.config import Settings
from app.crypto import Keyring
from app.db import utcnow
from app.errors import Conflict, NotFound, RunFailed, TokenfarmError
from app.runs.flights import advisory_key, endpoint_turn
from app.runs.models import Run, RunSecret
from app.runs.schemas import RecoveredSecret, RecoveryResult
from app.runs.spool import Spool, SpooledAnswer
from app.secrets.store import SecretStore

if TYPE_CHECKING:
    from app.outbound import Outbound, OutboundResponse
    from app.runs.storing import RunStorage

logger = logging.getLogger("tokenfarm.run")


class InFlight(Conflict):
    """The run may still store its writes itself."""


class Recovery:
    """Recovers runs, within the caller's transaction (the request's session or the CLI's)."""

    def __init__(self, session: AsyncSession, keyring: Keyring, settings: Settings) -> None:
        self.session = session
        self.keyring = keyring
        self.settings = settings

    async def recover(
        self, run_id: str, *, actor: str, force: bool = False, over: bool = False
    ) -> RecoveryResult:
        """Write the kept answer of run `run_id`; the run becomes `recovered`. `over`: the caller
        knows the run is no longer in flight (its answer came from this process's spool)."""
        run = (
            await self.session.execute(select(Run).where(col(Run.id) == run_id).with_for_update())
        ).scalar_one_or_none()
        if run is None:
            raise NotFound(f"no run {run_id!r} in the log")
        if run.recovery is None:
            raise Conflict(
                f"run {run_id} has nothing to recover (its status is {run.status!r}); only a run "
                "whose upstream answered but whose writes were not stored keeps an answer"
            )
        if run.status == "storing" and not force and not over:
            await self._ensure_not_in_flight(run)
        payload: dict[str, Any] = self.keyring.decrypt(run.recovery)
        store = SecretStore(self.session, self.keyring, self.settings)
        writes = payload["writes"] if "writes" in payload else await self._replay(run_id, payload)
        written: list[RecoveredSecret] = []
        for write in writes:
            name = write["secret"]
            secret = await store.get(name)
            current = await store.current_version(secret, write["environment"])
            if current != write["base_version"] and await self._stored_by(
                store, secret, write["environment"], run_id
            ):
                written.append(RecoveredSecret(secret=name, version=current))
                continue  # stored by the run itself, or by an earlier recovery of it
            if current != write["base_version"] and not force:
                raise Conflict(
                    f"secret {name!r} changed since run {run_id} began (version "
                    f"{write['base_version']} is now {current}): recovering would overwrite a "
                    "newer value; nothing was written. Recover with force to write it anyway",
                    secret=name,
                )
            expires_at = write.get("expires_at")
            result = await store.set_value(
                secret,
                write["value"],
                environment=write["environment"],
                expires_at=datetime.fromisoformat(expires_at) if expires_at else None,
                actor=actor,
                source="recovery",
                run_id=run_id,
                expected_version=current,
            )
            secret.last_refreshed_at = utcnow()
            written.append(RecoveredSecret(secret=name, version=result.version))
            targeted = await self.session.get(RunSecret, (run_id, name))
            if targeted is not None:
                targeted.written = True
        run.status = "recovered"
        run.recovery = None
        run.finished_at = run.finished_at or utcnow()
        await self.session.flush()
        return RecoveryResult(run_id=run_id, status="recovered", written=written)

    async def _replay(self, run_id: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
        """The writes the action as it ran makes of its kept answers (nothing is sent)."""
        # Imported here: the engine and the nodes are not needed to read the run log.
        from app.pipeline.analysis import compile_action
        from app.pipeline.context import RequestData, RunContext
        from app.pipeline.engine import execute

        action = compile_action(payload["action"])
        store = SecretStore(self.session, self.keyring, self.settings)
        loaded = await store.load_for_run(set(action.reads))
        replayed = _KeptAnswers(payload["answers"])
        run = payload["run"]
        ctx = RunContext(
            run_id=run_id,
            actor=Actor(kind="system", name=f"replay of {run['actor']}", permissions=frozenset()),
            outbound=cast("Outbound", replayed),
            variables=dict(payload["variables"]),
            secrets={name: s.value for name, s in loaded.items() if s is not None},
            request=RequestData(**payload["request"]),
            clock=replayed.clock,
        )
        for value in ctx.secrets.values():
            ctx.redactor.add(value)
        try:
            await execute(action.nodes, ctx)
        except TokenfarmError as exc:
            raise Conflict(
                f"the answer kept by run {run_id} does not replay through its action "
                f"({exc.error_type}: {ctx.redactor.text(exc.message)}); nothing was written"
            ) from None
        bases = {base["secret"]: base for base in payload["bases"]}
        return [
            {
                "secret": name,
                "environment": bases[name]["environment"],
                "value": write.value,
                "expires_at": write.expires_at.isoformat() if write.expires_at else None,
                "base_version": bases[name]["base_version"],
            }
            for name, write in sorted(ctx.writes.items())
            if name in bases
        ]

    @staticmethod
    async def _stored_by(store: SecretStore, secret: Any, environment: str, run_id: str) -> bool:
        """Whether the current value of the secret was written by run `run_id`."""
        versions = await store.versions(secret, environment)
        return any(version.current and version.run_id == run_id for version in versions)

    async def _ensure_not_in_flight(self, run: Run) -> None:
        """Refuse while the run may still store its writes itself."""
        bind = self.session.get_bind()
        if bind.dialect.name == "postgresql":
            # A run holds its endpoint's advisory lock until it has stored its outcome: if the
            # lock is free, the run is over (its process is gone). Held until this commits.
            key = advisory_key(endpoint_turn(run.service_slug, run.endpoint_readable_id))
            free = (
                await self.session.execute(
                    text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": key}
                )
            ).scalar_one()
            if free:
                return
            raise InFlight(
                f"run {run.id} may still be in flight: endpoint {run.service_slug}/"
                f"{run.endpoint_readable_id} is running; try again once it is done"
            )
        in_flight_until = run.started_at + timedelta(
            seconds=self.settings.run_deadline_seconds + self.settings.http_timeout_seconds
        )
        if utcnow() < in_flight_until:
            raise InFlight(
                f"run {run.id} may still be in flight until {in_flight_until.isoformat()}; "
                "try again then, or recover with force if its process is known to be gone"
            )


class _KeptAnswers:
    """Stands in for the outbound client when a run's kept answers are replayed: each request
    gets the next kept answer, in the order they arrived; none is sent."""

    default_timeout_seconds = 30.0

    def __init__(self, answers: list[dict[str, Any]]) -> None:
        self.answers = list(answers)
        self.now = float(answers[0]["clock"]) if answers else 0.0

    def clock(self) -> float:
        """The run's clock as the last answer handed out arrived."""
        return self.now

    async def send(self, method: str, url: str, **options: Any) -> OutboundResponse:
        """The next kept answer."""
        from app.outbound import OutboundResponse

        if not self.answers:
            raise RunFailed(
                "the run made a request whose answer it never received (or did not keep)"
            )
        answer = self.answers.pop(0)
        self.now = float(answer["clock"])
        return OutboundResponse(
            status=answer["status"],
            headers=answer["headers"],
            content=base64.b64decode(answer["content"]),
            content_type=answer["content_type"],
        )


@dataclass
class ReplayReport:
    """What replaying the spool did."""

    recovered: list[RecoveryResult] = field(default_factory=list)
    # run id -> why its answer stays in the run row for an operator (it is out of the spool).
    refused: dict[str, str] = field(default_factory=dict)
    # Runs still in the spool: the database failed again, or the run is in flight here.
    waiting: list[str] = field(default_factory=list)
    # Runs whose spooled answer was already written (by the run, or an earlier replay).
    done: list[str] = field(default_factory=list)


async def replay_spool(
    session_factory: async_sessionmaker[AsyncSession],
    keyring: Keyring,
    settings: Settings,
    spool: Spool,
    *,
    actor: str,
    in_flight: set[str] | frozenset[str] = frozenset(),
    only: list[str] | None = None,
) -> ReplayReport:
    """Move every spooled answer into its run row, then recover the run (compare-and-set, as
    `Recovery.recover` does); each spool file goes once its answer is committed in the database.
    Raises what the database raised when it is still down (the rest stays spooled)."""
    report = ReplayReport()
    for entry in spool.entries():
        if (only is not None and entry.run_id not in only) or entry.run_id in in_flight:
            report.waiting.append(entry.run_id)
            continue
        async with session_factory() as session, session.begin():
            kept = await _into_run_row(session, keyring, entry)
        spool.remove(entry.run_id)
        if not kept:
            report.done.append(entry.run_id)
            continue
        try:
            async with session_factory() as session, session.begin():
                recovery = Recovery(session, keyring, settings)
                result = await recovery.recover(entry.run_id, actor=actor, over=True)
            report.recovered.append(result)
            logger.info("run %s: its spooled answer is written", entry.run_id)
        except (Conflict, NotFound) as exc:
            report.refused[entry.run_id] = exc.message
            logger.warning(
                "run %s: its spooled answer is kept in the run for an operator: %s",
                entry.run_id,
                exc.message,
            )
    return report


async def _into_run_row(session: AsyncSession, keyring: Keyring, entry: SpooledAnswer) -> bool:
    """Put a spooled answer in its run row (inserted as `storing` if the run left none); False
    when the run's writes were stored or recovered meanwhile (nothing is left to do)."""
    run = await session.get(Run, entry.run_id, with_for_update=True)
    ciphertext = keyring.encrypt(entry.payload)
    if run is None:
        meta = entry.payload["run"]
        session.add(
            Run(
                id=entry.run_id,
                service_slug=meta["service_slug"],
                endpoint_readable_id=meta["endpoint_readable_id"],
                trigger=meta["trigger"],
                schedule_name=meta["schedule_name"],
                actor=meta["actor"],
                status="storing",
                http_status=200,
                started_at=datetime.fromisoformat(meta["started_at"]),
                trace=[],
                recovery=ciphertext,
            )
        )
        await session.flush()
        for name in sorted(entry.secrets):
            session.add(RunSecret(run_id=entry.run_id, secret_name=name, written=False))
    elif run.status in ("storing", "failed"):
        run.status = "storing"
        run.recovery = ciphertext
    else:
        return False
    return True


async def find_orphans(
    session_factory: async_sessionmaker[AsyncSession], started_before: datetime
) -> dict[str, set[str]]:
    """Runs left `storing` with a kept answer by a process that is gone (or by a replica still
    running them: recovering checks), with the secrets each targets."""
    async with session_factory() as session:
        rows = (
            await session.execute(
                select(col(Run.id), col(RunSecret.secret_name))
                .join(RunSecret, col(RunSecret.run_id) == col(Run.id))
                .where(
                    col(Run.status) == "storing",
                    col(Run.recovery).is_not(None),
                    col(Run.started_at) < started_before,
                )
            )
        ).all()
    orphans: dict[str, set[str]] = {}
    for run_id, name in rows:
        orphans.setdefault(run_id, set()).add(name)
    return orphans


async def replay_pending(
    storage: RunStorage, *, actor: str, only: list[str] | None = None
) -> ReplayReport:
    """Write the kept answers that wait: the spool's, then those of orphaned runs once they can
    no longer be in flight. Raises what the database raised when it is (still) down."""
    # Counted before any write too: a run that loads meanwhile must not miss the change.
    storage.replays += 1
    try:
        report = await replay_spool(
            storage.session_factory,
            storage.keyring,
            storage.settings,
            storage.spool,
            actor=actor,
            in_flight=storage.in_flight,
            only=only,
        )
    finally:
        storage.replays += 1
    for run_id in list(storage.orphans):
        if (only is not None and run_id not in only) or run_id in storage.in_flight:
            continue
        try:
            async with storage.session_factory() as session, session.begin():
                recovery = Recovery(session, storage.keyring, storage.settings)
                report.recovered.append(await recovery.recover(run_id, actor=actor))
            logger.info("run %s: the answer it kept is written", run_id)
        except InFlight:
            report.waiting.append(run_id)
            continue
        except (Conflict, NotFound) as exc:
            # Stored by its replica, or a secret changed since: not this process's to write.
            report.refused[run_id] = exc.message
        finally:
            storage.replays += 1
        storage.orphans.pop(run_id, None)
    return report
