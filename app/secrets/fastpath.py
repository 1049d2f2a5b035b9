"""The hot path of a token read, answered before routing when both caches already know it.

Apps poll `GET /v1/secrets/NAME/value` far more often than anything else. When the caller's
credential is in the actor cache, it holds `secrets.read:NAME`, and the value cache (SQLite: valid
while nothing was committed) holds the value, the answer is exactly what the route would send: it
comes from the same caches through the same checks. Anything else (no or another credential shape,
a query string, a miss, a refused permission) goes on to the route, which resolves, checks and
reads in full and answers every error; so this path never answers anything but a 200.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

from app.auth.dependencies import bearer_token
from app.pipeline.schemas import SECRET_NAME_PATTERN

if TYPE_CHECKING:
    from app.auth.cache import ActorCache
    from app.secrets.cache import ValueCache

VALUE_PATH = re.compile(r"/v1/secrets/(?P<name>" + SECRET_NAME_PATTERN.strip("^$") + r")/value")


class CachedValueReads:
    """Pure ASGI: answers a plain value read from the caches, or hands the request on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self._cached(scope) if scope["type"] == "http" else None
        if body is None:
            await self.app(scope, receive, send)
            return
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

    @staticmethod
    def _cached(scope: Scope) -> bytes | None:
        if scope["method"] != "GET" or scope.get("query_string") or scope.get("root_path"):
            return None
        match = VALUE_PATH.fullmatch(scope["path"])
        if match is None:
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
        state = scope["app"].state
        actor_cache: ActorCache = state.actor_cache
        actor = actor_cache.get(credential)
        name = match["name"]
        if actor is None or not actor.can(f"secrets.read:{name}"):
            return None
        value_cache: ValueCache = state.value_cache
        return value_cache.answer(name, None, None)
