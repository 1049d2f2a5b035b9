"""The one dependency that says who is calling (`CurrentActor`), and the permission checks.

A caller is a user (a login JWT), a service account (an API key, `tfk_…`), or anonymous (no
credential: the built-in `anonymous` role). Both credentials travel as `Authorization: Bearer`;
the OpenAPI document declares both schemes so `/docs` can use either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer, OAuth2PasswordBearer

from app.auth import keys
from app.auth.accounts import AccountStore
from app.auth.actor import Actor
from app.db import utcnow
from app.errors import NotAuthenticated, PermissionDenied

login_scheme = OAuth2PasswordBearer(
    tokenUrl="/auth/token",
    scheme_name="Login",
    description="Log in with email and password; the token is sent as a bearer token.",
    auto_error=False,
)
api_key_scheme = HTTPBearer(
    scheme_name="APIKey",
    description="Paste a service account's API key (`tfk_…`).",
    auto_error=False,
)


async def current_actor(
    request: Request,
    login_token: Annotated[str | None, Depends(login_scheme)],
    api_key: Annotated[HTTPAuthorizationCredentials | None, Depends(api_key_scheme)],
) -> Actor:
    """The caller, from its credential; a bad credential is a 401, never a fallback."""
    credential = login_token or (api_key.credentials if api_key else None)
    if not credential and "authorization" in request.headers:
        # `Basic …` or an empty `Bearer` is a credential we can't read, not the lack of one.
        raise NotAuthenticated(
            "send the credential as `Authorization: Bearer <login token or API key>`"
        )
    state = request.app.state
    # A session of its own, closed before the route runs: a run must not hold one open.
    async with state.session_factory() as session, session.begin():
        accounts = AccountStore(session)
        if not credential:
            return await accounts.anonymous_actor()
        if credential.startswith(keys.PREFIX):
            return await accounts.actor_for_key(credential, utcnow())
        return await accounts.actor_for_token(state.tokens.verify(credential))


CurrentActor = Annotated[Actor, Depends(current_actor)]


def refuse(actor: Actor, permission: str, alternatives: str = "") -> None:
    """401 for the anonymous caller (it should log in), 403 naming the permission otherwise."""
    wanted = f"the permission {permission!r}{alternatives}"
    if actor.kind == "anonymous":
        raise NotAuthenticated(
            f"log in (POST /auth/token) or send an API key: this needs {wanted}",
            permission=permission,
        )
    raise PermissionDenied(f"this needs {wanted}", permission=permission)


def ensure(actor: Actor, permission: str) -> None:
    """Refuse unless the actor holds `permission` (for checks that name a secret or service)."""
    if not actor.can(permission):
        refuse(actor, permission)


def require(permission: str) -> Callable[..., object]:
    """A route dependency that refuses callers without a fixed permission."""

    async def check(actor: CurrentActor) -> Actor:
        ensure(actor, permission)
        return actor

    check.__name__ = f"require_{permission.replace('.', '_').replace(':', '_')}"
    return check
