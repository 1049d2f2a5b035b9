"""What the secrets page shows, built from the secrets store and the actor's own checks.

Nothing here decides a permission: it asks the `Actor` (`can`, `can_run`), as the API does,
only to leave out what the user can't do; the routes call the domain code, which checks again.
No value is ever read here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from app.auth.actor import Actor
from app.auth.permissions import Permission, secret_connect
from app.secrets.schemas import SecretRead, SecretVersionRead

STATUSES = ("ok", "failing", "needs_reauth")
ConnectAction = Literal["Connect", "Reconnect"]


def duration_text(seconds: float) -> str:
    """`3 h 5 min`, `45 s`, `2 d 4 h`: a duration for people."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, _ = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def relative_text(moment: datetime | None, now: datetime) -> str:
    """`in 5 min`, `expired 3 min ago`, or an em dash for never."""
    if moment is None:
        return "—"
    delta = (moment - now).total_seconds()
    if delta >= 0:
        return f"in {duration_text(delta)}"
    return f"{duration_text(-delta)} ago"


def connect_action(actor: Actor, secret: SecretRead) -> ConnectAction | None:
    """`Connect` (no tokens yet) or `Reconnect` (it has some, or needs reauth) for a connected
    secret and a user holding `secrets.connect:NAME`; None otherwise. The link opens
    `/console/secrets/{name}/connect`, which starts the flow through the connect code."""
    if secret.provider is None or not actor.can(secret_connect(secret.name)):
        return None
    if secret.has_value or secret.status == "needs_reauth":
        return "Reconnect"
    return "Connect"


@dataclass(frozen=True)
class SecretRow:
    """One row of the secrets table: metadata and the actions this user is offered."""

    name: str
    environment: str
    status: str
    version: int | None
    expires_at: datetime | None
    expires_in: str
    next_refresh: str
    failure_count: int
    last_error: str | None
    can_refresh: bool
    can_manage: bool
    rollback_to: int | None
    connect: ConnectAction | None


def may_list_secrets(actor: Actor) -> bool:
    """Listing secrets is `secrets.manage`, as `GET /v1/secrets` is."""
    return actor.can(Permission.SECRETS_MANAGE)


def may_refresh(actor: Actor, secret: SecretRead) -> bool:
    """Whether to offer Refresh: the secret has a refresh endpoint the user may run."""
    if not secret.refresh_endpoint:
        return False
    slug, readable_id = secret.refresh_endpoint.split("/", 1)
    return actor.can_run(slug, readable_id)


def secret_row(
    actor: Actor, secret: SecretRead, previous_version: int | None, now: datetime
) -> SecretRow:
    """The row of one secret, as `actor` sees it."""
    return SecretRow(
        name=secret.name,
        environment=secret.environment,
        status=secret.status,
        version=secret.version,
        expires_at=secret.expires_at,
        expires_in=relative_text(secret.expires_at, now),
        next_refresh=relative_text(secret.next_refresh_at, now),
        failure_count=secret.failure_count,
        last_error=secret.last_error,
        can_refresh=may_refresh(actor, secret),
        can_manage=actor.can(Permission.SECRETS_MANAGE),
        rollback_to=previous_version if actor.can(Permission.SECRETS_MANAGE) else None,
        connect=connect_action(actor, secret),
    )


def previous_version(versions: list[SecretVersionRead]) -> int | None:
    """The version before the current one (what Roll back makes current again), if any."""
    newest_first = iter(versions)
    for version in newest_first:
        if version.current:
            following = next(newest_first, None)
            return following.version if following else None
    return None
