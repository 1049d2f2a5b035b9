"""Compare a fast path's answer with its route's, in the same app (`app.state.fast_paths`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
from fastapi import FastAPI, Request

from app.auth.actor import Actor
from app.auth.dependencies import bearer_token, current_actor

# Per request by design: the request id, answered on every response.
PER_REQUEST_HEADERS = {"x-request-id"}


@dataclass(frozen=True)
class Answer:
    """What a client gets: status, every header but the request id, and the body's bytes."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def answer_of(response: httpx.Response, normalise: dict[str, bytes] | None = None) -> Answer:
    """The response as an `Answer`; `normalise` maps byte patterns to what replaces them."""
    body = response.content
    for pattern, replacement in (normalise or {}).items():
        body = re.sub(pattern.encode(), replacement, body)
    headers = tuple(
        (name, value)
        for name, value in response.headers.multi_items()
        if name not in PER_REQUEST_HEADERS
    )
    return Answer(response.status_code, headers, body)


@dataclass
class RouteCalls:
    """How many requests reached a route that resolves its caller (a fast path resolves none)."""

    count: int = 0


@contextmanager
def counting_route_calls(app: FastAPI) -> Iterator[RouteCalls]:
    """Count the requests that went through routing to a route resolving its caller."""
    calls = RouteCalls()

    async def counted(request: Request) -> Actor:
        calls.count += 1
        return await current_actor(request)

    app.dependency_overrides[current_actor] = counted
    try:
        yield calls
    finally:
        del app.dependency_overrides[current_actor]


async def fast_and_routed(
    app: FastAPI, http: httpx.AsyncClient, path: str, *, fast: bool
) -> tuple[httpx.Response, httpx.Response]:
    """GET `path` twice, first with the fast paths on, then off (always routed); `fast`: whether
    the fast path must answer the first itself (else it hands the request on to the route)."""
    credential = bearer_token(http.headers["authorization"])
    assert credential is not None and app.state.actor_cache.get(credential) is not None, (
        "the caller must be in the actor cache, or the fast path is never asked"
    )
    with counting_route_calls(app) as calls:
        assert app.state.fast_paths is True
        first = await http.get(path)
        assert calls.count == (0 if fast else 1), f"{calls.count} routed, fast={fast}"
        app.state.fast_paths = False
        try:
            routed = await http.get(path)
        finally:
            app.state.fast_paths = True
        assert calls.count == (1 if fast else 2), "the second request was not routed"
    return first, routed
