"""A run's pre-flight: every write target is checked before any node runs, so a run whose
writes could not be stored calls nothing (no upstream spends a grant for an answer we would drop).
"""

from __future__ import annotations

from app.auth.actor import Actor
from app.auth.permissions import secret_update_from_service
from app.errors import (
    Conflict,
    NeedsReauth,
    PermissionDenied,
    SecretLocked,
    SecretNotEnvironmentSpecific,
)
from app.runs.record import PreparedRun
from app.secrets.rules import Unwritable, why_runs_cannot_write


def preflight(prepared: PreparedRun, actor: Actor, force: bool) -> None:
    """Refuse the run before any node runs if a write target could not be stored."""
    for path, name in prepared.targets:
        if not actor.can(secret_update_from_service(name)):
            raise PermissionDenied(
                f"{path}: writing secret {name!r} needs the permission "
                f"{secret_update_from_service(name)!r}; nothing was called",
                permission=secret_update_from_service(name),
                secret=name,
            )
        loaded = prepared.secrets.get(name)
        if loaded is None:
            raise Conflict(f"{path}: secret {name!r} does not exist; create it first", secret=name)
        why = why_runs_cannot_write(
            environment_specific=loaded.secret.environment_specific,
            locked=loaded.secret.locked,
        )
        if why is Unwritable.LOCKED:
            raise SecretLocked(f"{path}: secret {name!r} {why}; runs never write it", secret=name)
        if why is Unwritable.NOT_ENVIRONMENT_SPECIFIC:
            raise SecretNotEnvironmentSpecific(
                f"{path}: secret {name!r} {why}; runs only write environment-specific secrets",
                secret=name,
            )
    for name in sorted(prepared.target_names):
        loaded = prepared.secrets.get(name)
        if not force and loaded is not None and loaded.secret.status == "needs_reauth":
            raise NeedsReauth(
                f"secret {name!r} needs re-authorization: the token endpoint refused its "
                "grant (invalid_grant). Set a new value by hand (for example the refresh "
                "token, with PUT /v1/secrets/NAME/value), or call again with ?force=true; "
                "nothing was called",
                secret=name,
            )
