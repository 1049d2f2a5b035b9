"""The one dependency that says who is calling: `CurrentActor`.

Until identity lands every caller acts as the anonymous actor holding every permission, so the
routes already declare what they need and only this module changes when login arrives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends

from app.auth.actor import Actor
from app.errors import PermissionDenied

OPEN_ACTOR = Actor(kind="anonymous", name="anonymous", permissions=frozenset({"*"}))


async def current_actor() -> Actor:
    """The caller (for now: the anonymous actor with every permission)."""
    return OPEN_ACTOR


CurrentActor = Annotated[Actor, Depends(current_actor)]


def require(permission: str) -> Callable[..., object]:
    """A dependency that refuses callers without `permission` (a fixed one, no NAME part)."""

    async def check(actor: CurrentActor) -> Actor:
        if not actor.can(permission):
            raise PermissionDenied(
                f"this needs the permission {permission!r}", permission=permission
            )
        return actor

    check.__name__ = f"require_{permission.replace('.', '_').replace(':', '_')}"
    return check


def ensure(actor: Actor, permission: str) -> None:
    """Raise PermissionDenied unless the actor holds `permission` (for NAME-scoped checks)."""
    if not actor.can(permission):
        raise PermissionDenied(f"this needs the permission {permission!r}", permission=permission)
