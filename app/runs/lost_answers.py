"""After `invalid_grant`: was the refresh token spent by an earlier run whose answer was lost?

A refresh that failed ambiguously (`upstream_ambiguous`: a 5xx, timeout or lost connection after
the request may have reached the server) is not retried, and its run record keeps that type. If
a later refresh of the same secret, within the same streak of failures, is then refused with
`invalid_grant`, the likely cause is that lost answer: the server rotated the refresh token and
the successor never arrived (RFC 9700 §4.14.2). The secret goes to `needs_reauth` as after any
`invalid_grant` (app/secrets/health.py); this only explains why.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import NotFound, UpstreamAmbiguous, UpstreamFailed
from app.pipeline.rotation import SPENT_BY_LOST_ANSWER, WHAT_TO_DO
from app.runs.record import RUN_SECRET_TABLE, RUN_TABLE
from app.secrets.store import SecretStore

AMBIGUOUS = UpstreamAmbiguous.error_type
# The error types of a secret's latest failed runs that called something (they have an error
# class; a refusal before any call has none), newest first.
_RECENT_FAILURES = (
    select(RUN_TABLE.c.id, RUN_TABLE.c.error_type)
    .join_from(RUN_TABLE, RUN_SECRET_TABLE, RUN_SECRET_TABLE.c.run_id == RUN_TABLE.c.id)
    .where(
        RUN_SECRET_TABLE.c.secret_name == bindparam("name"),
        RUN_TABLE.c.status == "failed",
        RUN_TABLE.c.error_class.is_not(None),
    )
    .order_by(RUN_TABLE.c.started_at.desc(), RUN_TABLE.c.id.desc())
    .limit(bindparam("streak"))
)


async def lost_answer_run(
    store: SecretStore, session: AsyncSession, names: Iterable[str]
) -> str | None:
    """The run that failed ambiguously within the current failure streak of every one of
    `names` (the secrets a failure marks): a streak starts when a secret last had a value that
    worked or was set by hand, so a new refresh token set by hand ends the suspicion."""
    connection = await session.connection()
    found: str | None = None
    for name in names:
        try:
            streak = (await store.get(name)).failure_count
        except NotFound:
            continue
        if streak <= 0:
            return None
        rows = await connection.execute(_RECENT_FAILURES, {"name": name, "streak": streak})
        ambiguous = [str(run_id) for run_id, error_type in rows if error_type == AMBIGUOUS]
        if not ambiguous:
            return None
        found = found or ambiguous[0]
    return found


def explain_spent_grant(error: UpstreamFailed, lost_run_id: str) -> None:
    """Say in an `invalid_grant` error that an earlier run's lost answer probably spent the
    refresh token, and what to do."""
    if SPENT_BY_LOST_ANSWER not in error.message:  # not said already by the run's own retries
        error.message += f" ({SPENT_BY_LOST_ANSWER}, in run {lost_run_id}: {WHAT_TO_DO})"
    error.extra["lost_answer_run_id"] = lost_run_id
