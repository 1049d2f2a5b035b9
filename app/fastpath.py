"""The two hot paths, answered before routing when the caller's credential is in the actor cache.

Apps poll `GET /v1/secrets/NAME/value` and `GET /refresh/NAME` far more often than anything else,
and FastAPI's routing, dependency solving and exception layers cost more than a token read and a
good share of a refresh. Here they go straight to the code the routes run, with the same checks:

- A value read, when the caller holds `secrets.read:NAME` and the value cache (SQLite: valid while
  nothing was committed) holds the value: the answer is exactly what the route would send, from
  the same caches. Anything else goes on to the route, so this path only ever answers a 200.
- A refresh: `start_refresh` and `finish_refresh`, exactly what the route calls. An error before
  the run starts (unknown secret, a missing permission) hands the request to the route, which
  answers it; one after it started is answered here through the app's own error handler.

Anything else (no or another credential shape, a query string, a caller the cache doesn't know)
goes to the route, which resolves, checks and answers in full.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.auth.dependencies import bearer_token
from app.errors import TokenfarmError
from app.handlers import tokenfarm_error
from app.middleware import received_at
from app.pipeline.schemas import SECRET_NAME_PATTERN
from app.runs.refresh import finish_refresh, start_refresh

if TYPE_CHECKING:
    from app.auth.actor import Actor
    from app.auth.cache import ActorCache
    from app.secrets.cache import ValueCache

NAME = SECRET_NAME_PATTERN.strip("^$")
VALUE_PATH = re.compile(r"/v1/secrets/(?P<name>" + NAME + r")/value")
REFRESH_PATH = re.compile(r"/refresh/(?P<name>" + NAME + r")")


class FastPaths:
    """Pure ASGI: answers a plain value read or refresh of a known caller, or hands it on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            value = VALUE_PATH.fullmatch(scope["path"])
            refresh = None if value is not None else REFRESH_PATH.fullmatch(scope["path"])
            actor = _known_caller(scope) if value or refresh else None
            if actor is not None:
                if value is not None and await _cached_read(scope, send, actor, value["name"]):
                    return
                if refresh is not None and await _refresh(scope, receive, send, actor, refresh):
                    return
        await self.app(scope, receive, send)


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


async def _cached_read(scope: Scope, send: Send, actor: Actor, name: str) -> bool:
    """Answer a value read from the value cache (whether it did)."""
    if not actor.can(f"secrets.read:{name}"):
        return False
    value_cache: ValueCache = scope["app"].state.value_cache
    body = value_cache.answer(name, None, None)
    if body is None:
        return False
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
    return True


async def _refresh(
    scope: Scope, receive: Receive, send: Send, actor: Actor, match: re.Match[str]
) -> bool:
    """Run a refresh as the route would (whether it answered)."""
    runner = scope["app"].state.runner
    name = match["name"]
    arrived = received_at(scope)
    try:
        target = await start_refresh(runner, actor, name, force=False, received_at=arrived)
    except TokenfarmError:
        return False  # nothing ran: the route checks again and answers the error
    response: Response
    try:
        answer = await finish_refresh(runner, actor, name, target, force=False, received_at=arrived)
        response = JSONResponse(answer.result.model_dump(mode="json"), answer.http_status)
    except TokenfarmError as exc:
        response = await tokenfarm_error(Request(scope), exc)
    await response(scope, receive, send)
    return True
