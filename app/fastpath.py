"""Shortcuts for the hot routes, answered before routing when the caller's credential is in the
actor cache.

Apps poll `GET /v1/secrets/NAME/value` and `GET /refresh/NAME` far more often than anything else,
and FastAPI's routing, dependency solving and exception layers cost more than a token read and a
good share of a refresh. A route that wants to skip them declares a `FastPath` beside itself (its
router module): the route's endpoint, the shortcut, and the patterns its path parameters must
match (the ones the route checks). This module is only the mechanism: it matches a request on the
route's own `path_regex`, finds the caller in the actor cache, and asks the shortcut, which calls
the same domain code the route calls and answers exactly what the route would, or None to hand
the request on to the route. A domain error a shortcut raises is answered by the app's own
handler, as the route's would be.

Anything else (another method, no or another credential shape, a query string, a caller the
cache doesn't know) goes to the route, which resolves, checks and answers in full. Setting
`app.state.fast_paths = False` sends everything to the routes (the tests compare the two answers).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi.routing import APIRoute, iter_route_contexts
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from app.auth.dependencies import bearer_token
from app.errors import TokenfarmError
from app.handlers import tokenfarm_error

if TYPE_CHECKING:
    from app.auth.actor import Actor
    from app.auth.cache import ActorCache

# (scope, the known caller, the path parameters) -> the route's answer, or None: ask the route.
Shortcut = Callable[["Scope", "Actor", dict[str, str]], Awaitable[Response | None]]


@dataclass(frozen=True)
class FastPath:
    """A route's shortcut, declared beside the route: `endpoint` is the route's endpoint function
    (it finds the route and its path pattern), `params` the patterns its path parameters must
    match for the shortcut to be asked (anything else is the route's to refuse)."""

    endpoint: Callable[..., Any]
    shortcut: Shortcut
    params: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Bound:
    """A fast path bound to its route: the route's path regex and the parameters' patterns."""

    path_regex: re.Pattern[str]
    params: tuple[tuple[str, re.Pattern[str]], ...]
    shortcut: Shortcut

    def match(self, path: str) -> dict[str, str] | None:
        """The path parameters when `path` is the route's and they match, else None."""
        found = self.path_regex.match(path)
        if found is None:
            return None
        values = found.groupdict()
        for name, pattern in self.params:
            if pattern.fullmatch(values[name]) is None:
                return None
        return values


def bind(routes: Sequence[BaseRoute], fast_paths: Iterable[FastPath]) -> list[_Bound]:
    """Each fast path with its route's own path regex, as the app serves it (prefix included). A
    fast path for a route the app doesn't serve on GET, or for a parameter its path doesn't have,
    is a programming error."""
    by_endpoint = {
        route.endpoint: route
        for route in iter_route_contexts(routes)
        if isinstance(route.original_route, APIRoute) and "GET" in (route.methods or ())
    }
    bound = []
    for fast_path in fast_paths:
        route = by_endpoint.get(fast_path.endpoint)
        if route is None:
            raise LookupError(f"no GET route for the fast path of {fast_path.endpoint.__name__}")
        missing = set(fast_path.params) - set(route.param_convertors)
        if missing:
            raise LookupError(f"{route.path} has no path parameter {sorted(missing)}")
        params = tuple((name, re.compile(pattern)) for name, pattern in fast_path.params.items())
        bound.append(_Bound(route.path_regex, params, fast_path.shortcut))
    return bound


class FastPaths:
    """Pure ASGI: answers a plain GET of a known caller through its route's shortcut, or hands
    it on."""

    def __init__(self, app: ASGIApp, paths: Sequence[_Bound]) -> None:
        self.app = app
        self.paths = tuple(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            for path in self.paths:
                params = path.match(scope["path"])
                if params is None:
                    continue
                if await _answered(path.shortcut, params, scope, receive, send):
                    return
                break
        await self.app(scope, receive, send)


async def _answered(
    shortcut: Shortcut, params: dict[str, str], scope: Scope, receive: Receive, send: Send
) -> bool:
    """Ask the shortcut for a known caller, and send its answer (whether there was one)."""
    if not scope["app"].state.fast_paths:
        return False
    actor = _known_caller(scope)
    if actor is None:
        return False
    try:
        response = await shortcut(scope, actor, params)
    except TokenfarmError as exc:
        response = await tokenfarm_error(Request(scope), exc)
    if response is None:
        return False
    await response(scope, receive, send)
    return True


def _known_caller(scope: Scope) -> Actor | None:
    """The caller of a plain GET (no query string) with one bearer credential the actor cache
    knows, else None."""
    if scope.get("query_string") or scope.get("root_path"):
        return None
    authorization = None
    for key, value in scope["headers"]:
        if key == b"authorization":
            if authorization is not None:
                return None  # two of them: the route decides
            authorization = value.decode("latin-1")
    credential = bearer_token(authorization) if authorization is not None else None
    if credential is None:
        return None
    actor_cache: ActorCache = scope["app"].state.actor_cache
    return actor_cache.get(credential)
