"""Shortcuts for the hot routes, answered before routing when the caller's credential is in the
actor cache.

Apps poll `GET /v1/secrets/NAME/value` and `GET /refresh/NAME` far more often than anything else,
and FastAPI's routing, dependency solving and exception layers cost more than a token read and a
good share of a refresh. A route that wants to skip them declares a `FastPath` beside itself (its
router module): the route's endpoint and the shortcut. This module is only the mechanism: it
matches a request on the route's own `path_regex` and the patterns the route declares for its path
parameters (read off the route, never written twice), finds the caller in the actor cache, and
asks the shortcut, which calls
the same domain code the route calls and answers exactly what the route would, or None to hand
the request on to the route. A domain error a shortcut raises is answered by the app's own
handler, as the route's would be.

Anything else (another method, no or another credential shape, a query string, a caller the
cache doesn't know) goes to the route, which resolves, checks and answers in full. Setting
`app.state.fast_paths = False` sends everything to the routes (the tests compare the two answers).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from app.auth.dependencies import bearer_token
from app.errors import TokenfarmError, is_database_outage
from app.handlers import database_unavailable, tokenfarm_error

if TYPE_CHECKING:
    from app.auth.actor import Actor
    from app.auth.cache import ActorCache

# (scope, the known caller, the path parameters) -> the route's answer, or None: ask the route.
# `bytes` is a 200 JSON body, sent as the route's `Response(body, media_type="application/json")`
# sends it, without building one (the value read answers tens of thousands a second).
Shortcut = Callable[["Scope", "Actor", dict[str, str]], Awaitable[Response | bytes | None]]


@dataclass(frozen=True)
class FastPath:
    """A route's shortcut, declared beside the route: `endpoint` is the route's endpoint function
    (it finds the route, its path and its parameters' patterns)."""

    endpoint: Callable[..., Any]
    shortcut: Shortcut


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
    """Each fast path with its route's own path regex, as the app serves it (prefix included), and
    the patterns the route declares for its path parameters (a value outside them is the route's
    to refuse). A fast path for a route the app doesn't serve on GET is a programming error."""
    fast_paths = list(fast_paths)
    wanted = {fast_path.endpoint for fast_path in fast_paths}
    # Contexts are built lazily, router by router (each costs its routes' dependants): stop at
    # the last route a fast path needs instead of building every route of the app up front.
    by_endpoint: dict[Any, RouteContext] = {}
    for route in iter_route_contexts(routes):
        if isinstance(route.original_route, APIRoute) and "GET" in (route.methods or ()):
            if route.endpoint in wanted:
                by_endpoint[route.endpoint] = route
                if len(by_endpoint) == len(wanted):
                    break
    bound = []
    for fast_path in fast_paths:
        found = by_endpoint.get(fast_path.endpoint)
        if found is None:
            raise LookupError(f"no GET route for the fast path of {fast_path.endpoint.__name__}")
        route = found
        assert isinstance(route.original_route, APIRoute)
        bound.append(
            _Bound(route.path_regex, _path_patterns(route.original_route), fast_path.shortcut)
        )
    return bound


def _path_patterns(route: APIRoute) -> tuple[tuple[str, re.Pattern[str]], ...]:
    """The `pattern` each path parameter of the route declares (`Path(pattern=...)`)."""
    patterns = []
    for param in route.dependant.path_params:
        for rule in param.field_info.metadata:
            pattern = getattr(rule, "pattern", None)
            if isinstance(pattern, str):
                patterns.append((param.name, re.compile(pattern)))
    return tuple(patterns)


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
    except Exception as exc:
        if not is_database_outage(exc):
            raise
        # The route would answer the outage so too (app/handlers.py `database_error`).
        response = await tokenfarm_error(Request(scope), database_unavailable())
    if response is None:
        return False
    if isinstance(response, bytes):
        await _send_json(send, response)
    else:
        await response(scope, receive, send)
    return True


async def _send_json(send: Send, body: bytes) -> None:
    """A 200 JSON answer, with the headers Starlette's `Response` gives it, in that order."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-length", str(len(body)).encode()),
                (b"content-type", b"application/json"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


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
