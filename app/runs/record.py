"""A run's record: what it loaded, how it ended, and the run row with the secrets it targeted.

The statements run on the connection of whoever owns the transaction: the runner, in the one
greenlet that stores a run's writes (app/runs/storing.py `RunStorage._store_writes`), and the
scheduler for a tick that never ran. Core statements: every refresh passes here, and the unit of
work or an awaited call per statement would cost more than the statements.
"""

from __future__ import annotations

import base64
import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, delete, insert, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from app.crypto import Keyring
from app.db import storable, utcnow
from app.errors import TokenfarmError
from app.pipeline.context import RunContext
from app.runs.models import Run, RunSecret
from app.secrets.schemas import ValueWritten
from app.secrets.sql import LoadedSecret
from app.services.store import EndpointState, ServiceState

if TYPE_CHECKING:
    from app.outbound import OutboundResponse

RUN_TABLE = Run.__table__  # type: ignore[attr-defined]
RUN_SECRET_TABLE = RunSecret.__table__  # type: ignore[attr-defined]


@dataclass
class PreparedRun:
    """An endpoint loaded for a run, with the secrets it reads and writes."""

    service: ServiceState
    endpoint: EndpointState
    nodes: Sequence[Any]
    targets: Sequence[tuple[str, str]]
    secrets: dict[str, LoadedSecret | None]
    # How many kept answers this process had replayed when it was loaded (see RunStorage).
    replays_seen: int = 0

    @property
    def target_names(self) -> set[str]:
        """The secrets the action may write."""
        return {name for _, name in self.targets}


@dataclass
class RunOutcome:
    """What a run ended with, already redacted.

    `adopted`: nothing was called because another run (on another replica) had just refreshed
    the targets; `coalesced`: this caller shared a run another caller started.
    """

    run_id: str
    status: str
    http_status: int
    error: TokenfarmError | None = None
    error_body: dict[str, Any] | None = None
    response: Any = None
    # What the run stored, by secret: the new version and expiry (never the value).
    stored: dict[str, ValueWritten] = field(default_factory=dict)
    adopted: bool = False
    coalesced: bool = False

    @property
    def written(self) -> list[str]:
        """The secrets the run wrote."""
        return list(self.stored)


@dataclass
class RunRecord:
    """What recording a run needs besides its outcome."""

    prepared: PreparedRun
    ctx: RunContext
    trigger: str
    started_at: datetime
    started: float
    schedule_name: str | None = None
    # The upstream answers kept since they arrived (app/runs/storing.py `keep_answer`), and
    # where: "slot" (the run row) or "spool" (app/runs/spool.py); None: nothing kept yet.
    answers: list[dict[str, Any]] = field(default_factory=list)
    kept_in: str | None = None
    # The service variables as the run began: replaying an answer runs the action from there.
    initial_variables: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.initial_variables = copy.deepcopy(self.ctx.variables)

    @property
    def logged(self) -> bool:
        """Whether a successful run is recorded: with enable_log, and every schedule's tick."""
        return self.prepared.endpoint.enable_log or self.schedule_name is not None

    def row(self, outcome: RunOutcome, status: str, recovery: str | None = None) -> dict[str, Any]:
        """The run row as it is first inserted."""
        return {
            "id": self.ctx.run_id,
            "service_slug": self.prepared.service.slug,
            "endpoint_readable_id": self.prepared.endpoint.readable_id,
            "trigger": self.trigger,
            "schedule_name": self.schedule_name,
            "actor": self.ctx.actor.label,
            "status": status,
            "http_status": outcome.http_status,
            "started_at": self.started_at,
            "trace": [],
            "recovery": recovery,
        }

    def recovery(self, keyring: Keyring) -> str:
        """The pending writes, encrypted like every value, with the versions they replace."""
        writes = []
        for name, write in self.ctx.writes.items():
            loaded = self.prepared.secrets[name]
            assert loaded is not None
            writes.append(
                {
                    "secret": name,
                    "environment": loaded.environment,
                    "value": write.value,
                    "expires_at": write.expires_at.isoformat() if write.expires_at else None,
                    "base_version": loaded.version,
                }
            )
        return keyring.encrypt({"writes": writes})

    def add_answer(self, response: OutboundResponse) -> None:
        """Note an upstream answer to keep (with the run's clock as it arrived: replaying it
        computes the same expiries)."""
        self.answers.append(
            {
                "status": response.status,
                "headers": response.headers,
                "content": base64.b64encode(response.content).decode(),
                "content_type": response.content_type,
                "clock": self.ctx.clock(),
            }
        )

    def answers_payload(self) -> dict[str, Any]:
        """What replaying the kept answers needs (app/runs/recovery.py): the run, the action as
        it ran, its start (variables, request), the answers, and the versions its writes replace.
        Only ever stored encrypted."""
        request = self.ctx.request
        return {
            "kind": "answers",
            "run": {
                "service_slug": self.prepared.service.slug,
                "endpoint_readable_id": self.prepared.endpoint.readable_id,
                "trigger": self.trigger,
                "schedule_name": self.schedule_name,
                "actor": self.ctx.actor.label,
                "started_at": self.started_at.isoformat(),
            },
            "action": self.prepared.endpoint.action,
            "variables": self.initial_variables,
            "request": {"query": request.query, "body": request.body, "headers": request.headers},
            "answers": self.answers,
            "bases": [
                {"secret": name, "environment": loaded.environment, "base_version": loaded.version}
                for name in sorted(self.prepared.target_names)
                if (loaded := self.prepared.secrets.get(name)) is not None
            ],
        }

    def keep_answers_op(self, ciphertext: str) -> Callable[[Connection], None]:
        """What keeps the answers so far (encrypted) in the run row, `storing`: inserted with the
        first answer, updated with any later one."""
        placeholder = RunOutcome(run_id=self.ctx.run_id, status="storing", http_status=200)
        return partial(
            write_run,
            row=self.row(placeholder, "storing", ciphertext),
            completed={"recovery": ciphertext},
            names=sorted(self.prepared.target_names),
            kept=self.kept_in == "slot",
            written=[],
        )

    def keep_op(self, outcome: RunOutcome, keyring: Keyring) -> Callable[[Connection], None]:
        """What keeps the upstream's answer (encrypted) in the run row, `storing`, before the
        writes are stored: no rotated token is lost if the process or the database fails."""
        return partial(
            write_run,
            row=self.row(outcome, "storing", self.recovery(keyring)),
            completed={},
            names=sorted(self.prepared.target_names),
            kept=False,
            written=[],
        )

    def record_op(
        self, outcome: RunOutcome, kept: bool, written: list[str], *, drop_kept: bool = False
    ) -> Callable[[Connection], None]:
        """What completes the run row (inserted now, or kept since the upstream answered), for
        a connection: the run row as first inserted and the columns that complete it."""
        error = outcome.error_body or {}
        completed: dict[str, Any] = {
            "status": outcome.status,
            "http_status": outcome.http_status,
            "error_type": storable(error.get("type")),
            "error_class": error.get("error_class"),
            "error_message": storable(error.get("message")),
            "finished_at": utcnow(),
            "duration_ms": round((time.perf_counter() - self.started) * 1000, 2),
            "trace": self.ctx.redactor.value(self.ctx.trace),
        }
        if kept and (outcome.status == "succeeded" or drop_kept):
            completed["recovery"] = None
        return partial(
            write_run,
            row=self.row(outcome, outcome.status),
            completed=completed,
            names=sorted(self.prepared.target_names),
            kept=kept,
            written=written,
        )

    def stored_op(
        self, outcome: RunOutcome, kept: bool, written: list[str]
    ) -> Callable[[Connection], None] | None:
        """What records a run whose writes are being stored, in the same transaction: the run
        row if it is logged; else only the kept answer goes (None: there is nothing to do)."""
        if self.logged:
            return self.record_op(outcome, kept, written)
        if kept:
            return partial(drop_run, run_id=self.ctx.run_id)
        return None

    async def save(
        self, session: AsyncSession, outcome: RunOutcome, kept: bool, *, drop_kept: bool = False
    ) -> None:
        """Complete the run row (inserted now, or kept since the upstream answered); `drop_kept`:
        the kept answer goes (the action failed after it arrived, so its writes are void)."""
        connection = await session.connection()
        await connection.run_sync(
            self.record_op(outcome, kept, sorted(outcome.written), drop_kept=drop_kept)
        )


# Built once: building and keying a statement costs several times what executing it does.
_INSERT_RUN = insert(RUN_TABLE)
_COMPLETE_RUN = update(RUN_TABLE).where(RUN_TABLE.c.id == bindparam("w_id"))
_DROP_RUN = delete(RUN_TABLE).where(RUN_TABLE.c.id == bindparam("w_id"))
_INSERT_RUN_SECRET = insert(RUN_SECRET_TABLE)
_MARK_WRITTEN = (
    update(RUN_SECRET_TABLE)
    .where(
        RUN_SECRET_TABLE.c.run_id == bindparam("w_run_id"),
        RUN_SECRET_TABLE.c.secret_name.in_(bindparam("w_names", expanding=True)),
    )
    .values(written=True)
)


def drop_run(connection: Connection, run_id: str) -> None:
    """Forget the kept answer of a stored run that isn't logged (enable_log is off)."""
    connection.execute(_DROP_RUN, {"w_id": run_id})


def write_run(
    connection: Connection,
    row: dict[str, Any],
    completed: dict[str, Any],
    names: list[str],
    *,
    kept: bool,
    written: list[str],
) -> None:
    """Insert the run row and the secrets it targeted, or complete the row kept since the
    upstream answered (`kept`, inserted if it is gone), then mark the secrets written."""
    run_id = row["id"]
    if not kept or connection.execute(_COMPLETE_RUN, {"w_id": run_id, **completed}).rowcount != 1:
        connection.execute(_INSERT_RUN, {**row, **completed})
        if names:
            connection.execute(
                _INSERT_RUN_SECRET,
                [{"run_id": run_id, "secret_name": name, "written": False} for name in names],
            )
    if written:
        connection.execute(_MARK_WRITTEN, {"w_run_id": run_id, "w_names": written})


def unrun(
    run_id: str,
    *,
    service_slug: str,
    endpoint_readable_id: str,
    trigger: str,
    schedule_name: str | None,
    actor: str,
    http_status: int,
    error_type: str,
    message: str,
    started_at: datetime,
    finished_at: datetime,
) -> Run:
    """The record of a run that failed before any node ran (a schedule's tick that was refused,
    or that a replica started and never finished), for the caller's session to add."""
    return Run(
        id=run_id,
        service_slug=service_slug,
        endpoint_readable_id=endpoint_readable_id,
        trigger=trigger,
        schedule_name=schedule_name,
        actor=actor,
        status="failed",
        http_status=http_status,
        error_type=error_type,
        error_message=storable(message),
        started_at=started_at,
        finished_at=finished_at,
        trace=[],
    )
