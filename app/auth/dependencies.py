"""The one dependency that says who is calling (`CurrentActor`), and the permission checks.

A caller is a user (a login JWT), a service account (an API key, `tfk_…`), or anonymous (no
credential: the built-in `anonymous` role). Both credentials travel as `Authorization: Bearer`;
the OpenAPI document declares both schemes so `/docs` can use either.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import iter_route_contexts
from fastapi.security import HTTPBearer, OAuth2PasswordBearer
from fastapi.security.utils import get_authorization_scheme_param

from app.auth import keys
from app.auth.accounts import AccountStore
from app.auth.actor import Actor, ensure
from app.auth.cache import ActorCache
from app.auth.permissions import Permission, plain_permission
from app.db import utcnow
from app.errors import NotAuthenticated

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


def bearer_token(header: str) -> str | None:
    """The credential of an `Authorization: Bearer …` header value, None for any other shape."""
    scheme, credential = get_authorization_scheme_param(header)
    return credential if scheme.lower() == "bearer" and credential else None


def bearer_credential(request: Request) -> str | None:
    """The credential of `Authorization: Bearer …`; None without the header; 401 for any other
    shape (`Basic …`, an empty `Bearer`): a credential we can't read, not the lack of one."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    credential = bearer_token(header)
    if credential is None:
        raise NotAuthenticated(
            "send the credential as `Authorization: Bearer <login token or API key>`"
        )
    return credential


async def current_actor(request: Request) -> Actor:
    """The caller, from its credential; a bad credential is a 401, never a fallback.

    The header is read here rather than through the two security schemes as dependencies (each
    dependency costs FastAPI measurable time on every request); `document_security` declares
    them in the OpenAPI document on every operation that resolves the caller.
    """
    credential = bearer_credential(request)
    state = request.app.state
    cache: ActorCache = state.actor_cache
    key = credential or ""
    cached = cache.get(key)
    if cached is not None:
        return cached
    generation = cache.generation
    expires_at: datetime | None = None
    # A session of its own, closed before the route runs: a run must not hold one open.
    async with state.session_factory() as session, session.begin():
        accounts = AccountStore(session)
        if not credential:
            actor = await accounts.anonymous_actor()
        elif credential.startswith(keys.PREFIX):
            actor, expires_at = await accounts.actor_for_key(credential, utcnow())
        else:
            claims = state.tokens.verify(credential)
            actor = await accounts.actor_for_token(claims)
            expires_at = datetime.fromtimestamp(claims.expires_at, UTC)
    cache.put(key, actor, generation=generation, credential_expires_at=expires_at)
    return actor


CurrentActor = Annotated[Actor, Depends(current_actor)]


def document_security(app: FastAPI) -> None:
    """Declare both schemes in the OpenAPI document, as alternatives, on every operation whose
    route resolves the caller (so `/docs` offers to authorize them)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        for scheme in (login_scheme, api_key_scheme):
            model = scheme.model.model_dump(mode="json", by_alias=True, exclude_none=True)
            schemes[scheme.scheme_name] = model
        requirement: list[dict[str, list[str]]] = [
            {login_scheme.scheme_name: []},
            {api_key_scheme.scheme_name: []},
        ]
        paths = schema.get("paths", {})
        for route in iter_route_contexts(app.routes):
            dependant = getattr(route, "dependant", None)
            if dependant is None or current_actor not in _calls(dependant):
                continue
            for method in route.methods or ():
                operation = paths.get(route.path, {}).get(method.lower())
                if operation is not None:
                    operation["security"] = requirement
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _calls(dependant: Dependant) -> set[Callable[..., Any]]:
    """Every dependency callable below a dependant, recursively."""
    calls: set[Callable[..., Any]] = set()
    for sub in dependant.dependencies:
        if sub.call is not None:
            calls.add(sub.call)
        calls |= _calls(sub)
    return calls


def require(permission: Permission) -> Callable[[Actor], Awaitable[Actor]]:
    """A route dependency that refuses callers without a plain permission.

    An unknown name raises UnknownPermission at once, while the router is being imported: a
    typo must stop the app from starting, not lock everyone out of (or into) a route.
    """
    wanted = plain_permission(permission)

    async def check(actor: CurrentActor) -> Actor:
        ensure(actor, wanted)
        return actor

    check.__name__ = f"require_{wanted.name.lower()}"
    check.permission = wanted  # type: ignore[attr-defined]  # read by required_permission()
    return check


def required_permission(call: Callable[..., object]) -> Permission | None:
    """The permission a `require(...)` dependency checks; None for any other callable."""
    permission = getattr(call, "permission", None)
    return permission if isinstance(permission, Permission) else None
