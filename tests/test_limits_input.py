"""What a request body may cost: its size is capped before anything reads or parses it, and a body
that doesn't arrive in time is answered 408 on a closed connection (app/middleware.py).

The byte counts come from the real app driven through ASGI with a body that never ends (so what
the app pulled is known exactly); what a client sees on the wire comes from raw sockets against
a real uvicorn on loopback.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.demo.loopback import LoopbackServer
from app.main import create_app
from tests.conftest import sqlite_database

MiB = 1024 * 1024
CHUNK = 64 * 1024


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLite only: nothing here reaches the database."""
    return sqlite_database(request, tmp_path)


@pytest.fixture
def server(settings: Settings) -> Iterator[LoopbackServer]:
    """The app under a real uvicorn, with a short body deadline."""
    quick = settings.model_copy(update={"body_timeout_seconds": 0.5})
    with LoopbackServer(create_app(quick)) as running:
        yield running


async def drive(
    app: FastAPI, path: str, headers: list[tuple[bytes, bytes]], chunks: int
) -> tuple[int, dict[str, Any], int]:
    """POST `chunks` chunks of 64 KiB (announced by `headers`) straight into the ASGI app.

    Answers the status, the JSON body and how many body bytes the app pulled.
    """
    pulled = 0
    sent: list[dict[str, Any]] = []
    if not any(name == b"content-type" for name, _ in headers):
        headers = [(b"content-type", b"application/json"), *headers]
    if not any(name == b"content-length" for name, _ in headers):
        # Without a length, HTTP/1.1 sends a body chunked, and says so.
        headers = [(b"transfer-encoding", b"chunked"), *headers]

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        if pulled >= chunks * CHUNK:
            return {"type": "http.disconnect"}
        pulled += CHUNK
        return {"type": "http.request", "body": b" " * CHUNK, "more_body": pulled < chunks * CHUNK}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"tokenfarm.test"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("tokenfarm.test", 80),
    }
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), pulled


def exchange(
    server: LoopbackServer, head: str, body: bytes, wait: float = 5.0
) -> tuple[bytes, float]:
    """Send a request head and (part of) a body on a raw socket; answers everything the server
    sent until it closed the connection, and how long that took."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=wait) as sock:
        sock.sendall(head.encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer, time.monotonic() - started


def status_and_error(answer: bytes) -> tuple[int, dict[str, Any]]:
    """The status and the `error` object of a raw HTTP/1.1 answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"connection: close" in head.lower(), head
    error: dict[str, Any] = json.loads(body)["error"]
    return status, error


class TestBodySize:
    async def test_a_declared_length_over_the_cap_is_refused_unread(
        self, anonymous_client: httpx.AsyncClient, app: FastAPI
    ) -> None:
        # 100-200 MB unauthenticated bodies were read and parsed before the 401.
        length = str(10 * MiB).encode()
        status, body, pulled = await drive(app, "/v1/secrets", [(b"content-length", length)], 160)
        assert (status, pulled) == (413, 0)
        assert body["error"] == {
            "type": "payload_too_large",
            "message": f"the request body is larger than {MiB} bytes",
        }
        response = await anonymous_client.post("/v1/secrets", content=b"x" * (10 * MiB))
        assert response.status_code == 413
        assert response.json()["error"]["type"] == "payload_too_large"

    async def test_a_chunked_body_is_cut_off_once_past_the_cap(self, app: FastAPI) -> None:
        status, body, pulled = await drive(app, "/v1/secrets", [], 160)  # 10 MiB, no length
        assert status == 413
        assert body["error"]["type"] == "payload_too_large"
        assert MiB < pulled <= MiB + CHUNK

    async def test_a_body_within_the_cap_reaches_authentication(
        self, anonymous_client: httpx.AsyncClient
    ) -> None:
        body = json.dumps({"name": "BIG", "value": "x" * (MiB - 100)})
        response = await anonymous_client.post(
            "/v1/secrets", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 401, response.text

    async def test_the_configuration_document_has_a_cap_of_its_own(
        self, client: httpx.AsyncClient, app: FastAPI
    ) -> None:
        credential = [(b"authorization", client.headers["authorization"].encode())]
        yaml = [(b"content-type", b"application/yaml"), *credential]
        status, body, pulled = await drive(app, "/v1/apply", yaml, 24)  # 1.5 MiB, no length
        assert pulled == 24 * CHUNK  # past the general cap, read whole: a document is up to 1 MiB
        assert (status, body["error"]["type"]) == (422, "invalid_document")
        status, body, pulled = await drive(app, "/v1/apply", yaml, 80)  # 5 MiB
        assert status == 413 and pulled <= 2 * MiB + CHUNK
        assert body["error"]["message"] == f"the request body is larger than {2 * MiB} bytes"
        # Refused for the credential before the body is read at all.
        status, _, pulled = await drive(app, "/v1/apply", [], 80)
        assert (status, pulled) == (401, 0)

    def test_a_large_declared_length_is_answered_at_once_on_the_wire(
        self, server: LoopbackServer
    ) -> None:
        # A short body with a large Content-Length held the connection 15 s and more.
        head = (
            "POST /v1/secrets HTTP/1.1\r\nHost: tokenfarm.test\r\n"
            f"Content-Type: application/json\r\nContent-Length: {100 * MiB}\r\n\r\n"
        )
        answer, seconds = exchange(server, head, b'{"name": ')
        status, error = status_and_error(answer)
        assert (status, error["type"]) == (413, "payload_too_large")
        assert seconds < 0.5  # not the body deadline: refused before anything waits for the body


class TestSlowBody:
    def test_a_body_that_does_not_arrive_in_time_is_408_and_the_connection_closed(
        self, server: LoopbackServer
    ) -> None:
        head = (
            "POST /v1/secrets HTTP/1.1\r\nHost: tokenfarm.test\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        )
        answer, seconds = exchange(server, head, b'{"name": ')
        status, error = status_and_error(answer)
        assert (status, error["type"]) == (408, "request_timeout")
        assert error["message"] == "the request body did not arrive within 0.5 s"
        assert 0.4 < seconds < 3

    def test_a_body_that_arrives_in_time_is_served(self, server: LoopbackServer) -> None:
        body = b'{"name": "X"}'
        head = (
            "POST /v1/secrets HTTP/1.1\r\nHost: tokenfarm.test\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        answer, _ = exchange(server, head, body)
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
