"""Rotation safety of `web_request`: a refresh_token grant is retried only after failures that
provably never reached the server; everything else is retried as before.

Requests go to real loopback servers (the echo server, a socket that drops the connection after
reading the request, a port nothing listens on) and are counted where they arrive.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.pipeline.rotation import REUSE_GRACE_RETRY
from tests.pipeline.conftest import Echo, run_action, run_trace

FAST_RETRIES = {"attempts": 3, "base_delay_seconds": 0.01, "max_delay_seconds": 0.05}
REFRESH_FORM = {"grant_type": "refresh_token", "refresh_token": "rt-canary-51f0"}


def token_request(url: str, body: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A POST to a token endpoint with this body and quick retries."""
    return {
        "type": "web_request",
        "method": "POST",
        "url": url,
        "body": body,
        "timeout_seconds": 2,
        "retry": dict(FAST_RETRIES),
        **fields,
    }


def web_request_entry(trace: list[dict[str, Any]]) -> dict[str, Any]:
    """The trace entry of the run's web_request."""
    entry: dict[str, Any] = next(e for e in trace if e["type"] == "web_request")
    return entry


def assert_says_rotation_may_have_happened(message: str) -> None:
    """The first ambiguous failure explains itself and tells what to do, and promises nothing."""
    assert "may have rotated the refresh token" in message
    assert "Not retried" in message
    assert "reconnect the secret, or set a new refresh token" in message
    assert "retrying" not in message


class TestRefreshGrantAfterAmbiguousFailure:
    @pytest.mark.parametrize(
        ("body", "variables"),
        [
            ({"form": REFRESH_FORM}, {"unused": 1}),
            (
                {"form": {"grant_type": "{{ vars.grant }}", "refresh_token": "rt"}},
                {"grant": "refresh_token"},
            ),
            (
                {
                    "raw": "grant_type=refresh_token&refresh_token=rt",
                    "content_type": "application/x-www-form-urlencoded",
                },
                {"unused": 1},
            ),
            ({"json": "{{ vars.body }}"}, {"body": REFRESH_FORM}),
        ],
        ids=["form", "form-binding", "raw-form", "json-binding"],
    )
    async def test_server_error_is_not_retried_however_the_grant_is_written(
        self,
        client: httpx.AsyncClient,
        echo: Echo,
        body: dict[str, Any],
        variables: dict[str, Any],
    ) -> None:
        echo.state.reply("/token", status=500, json={"error": "server_error"})
        action = [
            {"type": "update_object", "values": variables},
            token_request(echo.url("/token"), body),
        ]

        response = await run_action(client, action)

        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert error["type"] == "upstream_ambiguous"
        assert error["error_class"] == "transient"
        assert error["upstream_status"] == 500
        assert_says_rotation_may_have_happened(error["message"])
        assert len(echo.state.to("/token")) == 1
        assert "rt-canary-51f0" not in response.text

    async def test_timeout_after_sending_is_not_retried(
        self, client: httpx.AsyncClient, echo: Echo
    ) -> None:
        echo.state.reply("/token", delay_seconds=1.5, json={"access_token": "late"})
        action = [token_request(echo.url("/token"), {"form": REFRESH_FORM}, timeout_seconds=0.3)]

        response = await run_action(client, action)

        assert response.status_code == 504, response.text
        error = response.json()["error"]
        assert error["type"] == "upstream_ambiguous"
        assert "no answer within 0.3 s" in error["message"]
        assert_says_rotation_may_have_happened(error["message"])
        assert len(echo.state.to("/token")) == 1

    async def test_connection_lost_after_the_request_was_written_is_not_retried(
        self, client: httpx.AsyncClient, dropping_server: DroppingServer
    ) -> None:
        action = [token_request(dropping_server.url, {"form": REFRESH_FORM})]

        response = await run_action(client, action)

        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert error["type"] == "upstream_ambiguous"
        assert "connection failed" in error["message"]
        assert dropping_server.requests_read == 1

    async def test_refused_connection_is_retried_up_to_the_attempts(
        self, client: httpx.AsyncClient, closed_port_url: str
    ) -> None:
        action = [token_request(closed_port_url, {"form": REFRESH_FORM})]

        response = await run_action(client, action)

        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert error["type"] == "upstream_unreachable"
        assert error["attempts"] == 3
        retries = web_request_entry(await run_trace(client, response.json()["run_id"]))["retries"]
        assert [r["reached_upstream"] for r in retries] == [False, False]

    async def test_failed_tls_handshake_is_retried(
        self, client: httpx.AsyncClient, dropping_server: DroppingServer
    ) -> None:
        # Connected, but the handshake failed before any byte of the request was written.
        url = dropping_server.url.replace("http://", "https://")
        action = [token_request(url, {"form": REFRESH_FORM})]

        response = await run_action(client, action)

        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert error["type"] == "upstream_unreachable"
        assert error["attempts"] == 3
        assert dropping_server.connections == 3
        assert dropping_server.requests_read == 0

    async def test_rate_limited_answer_is_retried(
        self, client: httpx.AsyncClient, echo: Echo
    ) -> None:
        # A 429 is a definite refusal: the server did not act on the grant.
        echo.state.reply("/token", status=429, json={"error": "slow_down"})
        action = [token_request(echo.url("/token"), {"form": REFRESH_FORM})]

        response = await run_action(client, action)

        assert response.status_code == 502, response.text
        assert response.json()["error"]["type"] == "upstream_error"
        assert len(echo.state.to("/token")) == 3

    async def test_reuse_grace_policy_retries_ambiguous_failures(
        self, client: httpx.AsyncClient, echo: Echo
    ) -> None:
        echo.state.reply("/token", status=503, json={"error": "temporarily_unavailable"})
        retry = {**FAST_RETRIES, **REUSE_GRACE_RETRY}
        action = [token_request(echo.url("/token"), {"form": REFRESH_FORM}, retry=retry)]

        response = await run_action(client, action)

        assert response.status_code == 502, response.text
        assert response.json()["error"]["type"] == "upstream_error"
        assert response.json()["error"]["attempts"] == 3
        assert len(echo.state.to("/token")) == 3


class TestOtherRequests:
    async def test_client_credentials_server_error_is_retried_as_before(
        self, client: httpx.AsyncClient, echo: Echo
    ) -> None:
        echo.state.reply("/token", status=500, json={"error": "server_error"})
        body = {"form": {"grant_type": "client_credentials", "scope": "read"}}
        action = [token_request(echo.url("/token"), body)]

        response = await run_action(client, action)

        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert error["type"] == "upstream_error"
        assert error["attempts"] == 3
        assert len(echo.state.to("/token")) == 3

    async def test_stop_policy_retries_no_ambiguous_failure(
        self, client: httpx.AsyncClient, echo: Echo
    ) -> None:
        echo.state.reply("/orders", status=502, json={"error": "bad_gateway"})
        retry = {**FAST_RETRIES, "ambiguous_failures": "stop"}
        action = [
            token_request(echo.url("/orders"), {"json": {"order": 1}}, retry=retry),
        ]

        response = await run_action(client, action)

        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert error["type"] == "upstream_error"
        assert "ambiguous_failures is 'stop'" in error["message"]
        assert len(echo.state.to("/orders")) == 1

    async def test_stop_policy_still_retries_a_refused_connection(
        self, client: httpx.AsyncClient, closed_port_url: str
    ) -> None:
        retry = {**FAST_RETRIES, "ambiguous_failures": "stop"}
        action = [token_request(closed_port_url, {"json": {"order": 1}}, retry=retry)]

        response = await run_action(client, action)

        assert response.status_code == 502, response.text
        assert response.json()["error"]["attempts"] == 3

    async def test_unknown_policy_value_is_refused_when_saved(
        self, client: httpx.AsyncClient, echo: Echo
    ) -> None:
        retry = {**FAST_RETRIES, "ambiguous_failures": "sometimes"}
        action = [token_request(echo.url("/token"), {"form": REFRESH_FORM}, retry=retry)]
        response = await client.post(
            "/v1/services",
            json={
                "slug": "svc",
                "name": "Test",
                "endpoints": [{"readable_id": "run", "name": "Under test", "action": action}],
            },
        )

        assert response.status_code == 422, response.text
        assert "ambiguous_failures" in response.text


class DroppingServer:
    """A loopback socket that reads one HTTP request per connection and closes it unanswered:
    the connection is lost after the request was written."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests_read = 0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/token"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            first = await reader.read(1)
            if first == b"\x16":  # a TLS handshake record: hang up on it
                return
            head = first + await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            await reader.readexactly(length)
            self.requests_read += 1
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        """Stop listening."""
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def dropping_server() -> AsyncIterator[DroppingServer]:
    """A server that drops every connection after reading its request."""
    server = DroppingServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def closed_port_url() -> str:
    """A loopback URL nothing listens on (the port was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/token"
