"""A secret's health: `ok`, `failing` (with the failures in a row and the last error) or
`needs_reauth`; and the `SecretStatusChanged` event that tells webhooks and metrics of a change.

Every change of a secret's health goes through here (a run that failed or stored its writes, a
value set by hand, a refresh the scheduler could not start), so every change is announced: the
event is emitted once the transaction that made it commits, never if it rolls back.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.db import storable, utcnow
from app.events import SecretStatusChanged, emit_after_commit
from app.secrets.models import Secret

# Writes that start afresh: whatever went wrong before no longer applies (a person set it, or
# consented again at the provider: `connect`).
FRESH_START_SOURCES = ("manual", "create", "rollback", "recovery", "connect")
LAST_ERROR_MAX_CHARS = 2000


def changes_of_write(source: str, now: datetime) -> dict[str, Any]:
    """What a write changes on the secret row: a value set by hand is a fresh start, and one a
    run wrote is a refresh that worked, so the plan of the next refresh must not see an old
    status (announce it with `announce_healthy`)."""
    changes: dict[str, Any] = {"updated_at": now}
    if source in FRESH_START_SOURCES or source == "run":
        changes.update(status="ok", last_error=None, failure_count=0)
    if source == "run":
        changes["last_refreshed_at"] = now
    return changes


def announce_healthy(
    session: AsyncSession, name: str, old_status: str, run_id: str | None, at: datetime
) -> None:
    """Tell listeners (after the commit) that a secret that was not `ok` is `ok` again."""
    if old_status != "ok":
        emit_after_commit(session, SecretStatusChanged(name, old_status, "ok", 0, None, run_id, at))


def mark_healthy(session: AsyncSession, secret: Secret, run_id: str | None = None) -> None:
    """Make a loaded secret `ok` again (flushed with the session), and announce it."""
    announce_healthy(session, secret.name, secret.status, run_id, utcnow())
    secret.status = "ok"
    secret.failure_count = 0
    secret.last_error = None


def failure_summary(error_type: str, error_class: str, message: str) -> str:
    """The `last_error` of a failed refresh, as the API shows it."""
    return f"{error_type} ({error_class}): {message}"


def mark_failed(
    session: AsyncSession,
    secret: Secret,
    summary: str,
    *,
    revoked: bool = False,
    run_id: str | None = None,
) -> None:
    """Note a failed refresh on a loaded secret (its value stays as it was), and announce a change.

    `revoked` (the token endpoint answered `invalid_grant`): a person must authorize again, and
    `needs_reauth` stops further runs until a value is set by hand. Anything else is `failing`
    (a secret already in `needs_reauth` stays there), with one failure more.
    """
    old = secret.status
    if revoked:
        secret.status = "needs_reauth"
    elif secret.status != "needs_reauth":
        secret.status = "failing"
    secret.failure_count += 1
    secret.last_error = storable(summary[:LAST_ERROR_MAX_CHARS])
    if secret.status != old:
        emit_after_commit(
            session,
            SecretStatusChanged(
                secret.name,
                old,
                secret.status,
                secret.failure_count,
                secret.last_error,
                run_id,
                utcnow(),
            ),
        )
