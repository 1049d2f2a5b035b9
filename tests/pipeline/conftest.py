"""An echo server on loopback that records what actions send, plus helpers to run actions.

The echo server answers every method on every path. Tests tell it what to answer per path
(`echo.state.reply("/token", status=200, json={...})`) and read back what it received
(`echo.state.requests`).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.demo.loopback import LoopbackServer
from tests.conftest import store_action_unchecked

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@dataclass
class Reply:
    """What the echo server answers on one path."""

    status: int = 200
    json: Any = field(default_factory=lambda: {"ok": True})
    content: bytes | None = None
    content_type: str = "application/json"
    delay_seconds: float = 0.0


@dataclass
class Recorded:
    """One request the echo server received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        """The body as text."""
        return self.body.decode()

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    def form(self) -> dict[str, list[str]]:
        """The body parsed as a URL-encoded form."""
        return parse_qs(self.text, keep_blank_values=True)


class EchoState:
    """Replies per path and every request received, shared with the server thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[Recorded] = []
        self._replies: dict[str, Reply] = {}

    def reply(self, path: str, **fields: Any) -> None:
        """Answer requests to `path` with these `Reply` fields from now on."""
        with self._lock:
            self._replies[path] = Reply(**fields)

    def reply_for(self, path: str) -> Reply:
        """The reply configured for a path (`{"ok": true}` by default)."""
        with self._lock:
            return self._replies.get(path, Reply())

    def record(self, request: Recorded) -> None:
        """Keep a received request."""
        with self._lock:
            self._requests.append(request)

    @property
    def requests(self) -> list[Recorded]:
        """Every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def to(self, path: str) -> list[Recorded]:
        """The requests received on one path."""
        return [r for r in self.requests if r.path == path]


def create_echo_app(holder: dict[str, EchoState]) -> Starlette:
    """A Starlette app that records each request into the current state and answers its reply."""

    async def echo(request: Request) -> Response:
        state = holder["state"]
        state.record(
            Recorded(
                method=request.method,
                path=request.url.path,
                query=parse_qs(request.url.query, keep_blank_values=True),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=await request.body(),
            )
        )
        reply = state.reply_for(request.url.path)
        if reply.delay_seconds:
            await asyncio.sleep(reply.delay_seconds)
        if reply.content is not None:
            return Response(reply.content, status_code=reply.status, media_type=reply.content_type)
        return JSONResponse(reply.json, status_code=reply.status)

    return Starlette(routes=[Route("/{path:path}", echo, methods=ALL_METHODS)])


@dataclass
class Echo:
    """A running echo server and the state a test drives it with."""

    state: EchoState
    base_url: str

    def url(self, path: str) -> str:
        """The absolute URL of a path on the echo server."""
        return f"{self.base_url}{path}"


@pytest.fixture(scope="session")
def echo_server_process() -> Iterator[tuple[LoopbackServer, dict[str, EchoState]]]:
    """One uvicorn echo server for the session; each test swaps in a fresh state."""
    holder = {"state": EchoState()}
    with LoopbackServer(create_echo_app(holder), lifespan="off") as server:
        yield server, holder


@pytest.fixture
def echo(echo_server_process: tuple[LoopbackServer, dict[str, EchoState]]) -> Echo:
    """The echo server with a fresh state: nothing received, `{"ok": true}` everywhere."""
    server, holder = echo_server_process
    holder["state"] = EchoState()
    return Echo(state=holder["state"], base_url=server.url)


async def create_service(
    client: httpx.AsyncClient,
    action: list[Any],
    *,
    slug: str = "svc",
    readable_id: str = "run",
    variables: list[dict[str, Any]] | None = None,
    methods: list[str] | None = None,
    enable_log: bool = True,
) -> None:
    """Create a service with one endpoint running `action`, failing the test on any error."""
    endpoint: dict[str, Any] = {
        "readable_id": readable_id,
        "name": "Under test",
        "enable_log": enable_log,
        "action": action,
    }
    if methods is not None:
        endpoint["methods"] = methods
    response = await client.post(
        "/v1/services",
        json={"slug": slug, "name": "Test", "variables": variables or [], "endpoints": [endpoint]},
    )
    assert response.status_code == 201, response.text


async def run_action(
    client: httpx.AsyncClient,
    action: list[Any],
    *,
    variables: list[dict[str, Any]] | None = None,
    method: str = "GET",
    **request: Any,
) -> httpx.Response:
    """Save `action` as the endpoint `svc/run` and call it once; `request` goes to httpx."""
    await create_service(client, action, variables=variables)
    return await client.request(method, "/api/services/svc/run", **request)


async def run_unchecked(
    app: FastAPI,
    client: httpx.AsyncClient,
    action: list[Any],
    *,
    method: str = "GET",
    **request: Any,
) -> httpx.Response:
    """Store `action` as `svc/run` the way an action saved before the save-time rules is stored
    (the API refuses it now: assert that), and call it once."""
    refused = await client.post(
        "/v1/services",
        json={
            "slug": "svc",
            "name": "Test",
            "endpoints": [{"readable_id": "run", "name": "Under test", "action": action}],
        },
    )
    assert refused.status_code == 422, refused.text
    await store_action_unchecked(app, action)
    return await client.request(method, "/api/services/svc/run", **request)


async def run_trace(client: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    """The recorded trace of a run."""
    response = await client.get(f"/v1/runs/{run_id}")
    assert response.status_code == 200, response.text
    trace: list[dict[str, Any]] = response.json()["trace"]
    return trace
