"""Redaction covers every form a value takes on the wire, on every surface a failure reaches.

An upstream that echoes what it was sent (the form body, the basic-auth header, base64 and
JSON-escaped copies) answers `invalid_grant`: no form of the refresh token or the client secret
may reach the caller's 502, the run log and its traces, `tokenfarm runs --json`, the secrets'
`last_error` column, a webhook payload or a log line.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.config import Settings
from app.demo.loopback import LoopbackServer
from tests.cli.runner import invoke
from tests.conftest import canonical_action, create_secret
from tests.notifications.conftest import Receiver, create_webhook, wait_for
from tests.processes import replica_env

# `+`, `/` and `=` make every encoding differ from the raw value; `"`, `\` and `é` the JSON one.
REFRESH_CANARY = "CANARYrtSP+9x/7q=="
SECRET_CANARY = 'CANARYcs"q\\é+/=z'
CLIENT = "client-canary-3b8e"


def wire_copies(value: str) -> set[str]:
    """Every copy of `value` this test's upstream echoes back, worked out independently."""
    raw = value.encode()
    b64 = base64.b64encode(raw).decode()
    b64url = base64.urlsafe_b64encode(raw).decode()
    return {
        value,
        quote(value),
        quote(value, safe=""),
        quote_plus(value),
        b64,
        b64.rstrip("="),
        b64url,
        b64url.rstrip("="),
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
    }


PAIR = base64.b64encode(f"{CLIENT}:{SECRET_CANARY}".encode()).decode()
FORBIDDEN = wire_copies(REFRESH_CANARY) | wire_copies(SECRET_CANARY) | {PAIR}


async def echo_token_endpoint(request: Request) -> Response:
    """`invalid_grant`, with every form of what it was sent in the description."""
    body = (await request.body()).decode()
    extras = " ".join(sorted(wire_copies(REFRESH_CANARY) - {REFRESH_CANARY}))
    extras += " " + " ".join(sorted(wire_copies(SECRET_CANARY) - {SECRET_CANARY}))
    description = f"bad {body} auth={request.headers.get('authorization')} {extras}"
    description += " and so on" * 30  # longer than any excerpt an error message quotes
    return JSONResponse({"error": "invalid_grant", "error_description": description}, 400)


@pytest.fixture(scope="module")
def echo_server() -> Iterator[str]:
    """A token endpoint on loopback that echoes the request; answers its URL."""
    app = Starlette(routes=[Route("/oauth/token", echo_token_endpoint, methods=["POST"])])
    with LoopbackServer(app, lifespan="off") as server:
        yield f"{server.url}/oauth/token"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on loopback."""
    recorder = Receiver()
    app = Starlette(routes=[Route("/{path:path}", recorder.handle, methods=["POST"])])
    with LoopbackServer(app, lifespan="off") as server:
        recorder.url = server.url
        yield recorder


def leaks(seen: str) -> list[str]:
    """The forms of a canary that appear in `seen`."""
    return sorted(form for form in FORBIDDEN if form in seen)


class TestEncodedCopiesAreRedacted:
    async def test_no_form_of_a_secret_reaches_any_surface(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        echo_server: str,
        receiver: Receiver,
        settings: Settings,
        database_url: str,
        tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        assert len(FORBIDDEN) >= 12  # the forms really differ
        await create_secret(client, "CLIENT_ID", CLIENT, environment_specific=False)
        await create_secret(client, "CLIENT_SECRET", SECRET_CANARY, environment_specific=False)
        await create_secret(client, "REFRESH_TOKEN", REFRESH_CANARY)
        await create_secret(client, "ACCESS_TOKEN")
        service = {
            "slug": "oauth",
            "name": "OAuth",
            "endpoints": [
                {
                    "readable_id": "refresh-token",
                    "name": "Refresh",
                    "enable_log": True,
                    "action": canonical_action(echo_server),
                }
            ],
        }
        assert (await client.post("/v1/services", json=service)).status_code == 201
        patch = {"refresh_endpoint": "oauth/refresh-token"}
        assert (await client.patch("/v1/secrets/ACCESS_TOKEN", json=patch)).status_code == 200
        await create_webhook(client, "everything", f"{receiver.url}/hook")

        with caplog.at_level(logging.DEBUG):
            answer = await client.get("/refresh/ACCESS_TOKEN")
            await wait_for(lambda: len(receiver.all()) == 2)

        assert answer.status_code == 502, answer.text
        error = answer.json()["error"]
        assert error["oauth_error"] == "invalid_grant"
        assert "[REDACTED]" in error["message"]  # the echo is there, redacted
        assert leaks(answer.text) == []
        run_id = answer.json()["run_id"]

        listed = await client.get("/v1/runs")
        detail = await client.get(f"/v1/runs/{run_id}")
        assert listed.status_code == detail.status_code == 200
        assert "[REDACTED]" in detail.text
        assert leaks(listed.text) == [] and leaks(detail.text) == []

        async with app.state.session_factory() as session:
            rows = (await session.execute(text("SELECT name, last_error FROM secret"))).all()
            runs = (await session.execute(text("SELECT error_message, trace FROM run"))).all()
        last_errors = {name: last_error for name, last_error in rows}
        assert "invalid_grant" in last_errors["REFRESH_TOKEN"]
        assert leaks(repr(last_errors)) == [] and leaks(repr(runs)) == []

        for delivery in receiver.all():
            assert "invalid_grant" in delivery.json()["last_error"]
            assert leaks(delivery.body.decode()) == []

        assert leaks(caplog.text) == []

        env = replica_env(settings, database_url, str(tmp_path))
        printed = invoke("runs", "--json", env=env)
        assert printed.returncode == 0, printed.stderr
        assert run_id in printed.stdout
        assert leaks(printed.stdout + printed.stderr) == []

    async def test_an_upstream_excerpt_is_capped_and_quoted(
        self, client: httpx.AsyncClient, echo_server: str
    ) -> None:
        await create_secret(client, "CLIENT_ID", CLIENT, environment_specific=False)
        await create_secret(client, "CLIENT_SECRET", SECRET_CANARY, environment_specific=False)
        await create_secret(client, "REFRESH_TOKEN", REFRESH_CANARY)
        await create_secret(client, "ACCESS_TOKEN")
        service: dict[str, Any] = {
            "slug": "oauth",
            "name": "OAuth",
            "endpoints": [
                {
                    "readable_id": "refresh-token",
                    "name": "Refresh",
                    "action": canonical_action(echo_server),
                }
            ],
        }
        assert (await client.post("/v1/services", json=service)).status_code == 201

        answer = await client.post("/api/services/oauth/refresh-token")

        assert answer.status_code == 502, answer.text
        message = answer.json()["error"]["message"]
        excerpt = message.split(": invalid_grant ", 1)[1]
        assert excerpt.startswith('("bad ') and excerpt.endswith('…")'), message
        quoted = json.loads(excerpt[1:-1])
        assert quoted.startswith("bad grant_type=refresh_token&refresh_token=[REDACTED]")
        assert len(quoted) == 200 + len("…")
