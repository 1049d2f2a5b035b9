"""The outbound module: every way a call can go wrong becomes a domain error without values.

Real servers can't easily trickle an answer or break its content-encoding, so these faults come
from `httpx.MockTransport` handlers; refused connections use a real closed port.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.demo.loopback import LoopbackServer
from app.errors import BadUpstreamResponse, BindingError, UpstreamTimeout, UpstreamUnreachable
from app.outbound import Outbound

CANARY = "query-canary-77a1"


@pytest.fixture
def finalize_request_sessions() -> None:
    """No app here, so no request sessions to finalize (overrides the runs conftest's)."""


class Trickle(httpx.AsyncByteStream):
    """A body that arrives one byte at a time, each within any per-read timeout."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(50):
            await asyncio.sleep(0.1)
            yield b" "


def outbound_for(response: httpx.Response, **options: int) -> Outbound:
    """An Outbound whose every request gets `response`."""
    transport = httpx.MockTransport(lambda request: response)
    return Outbound(httpx.AsyncClient(transport=transport), egress_allow="upstream.test", **options)


class TestFailuresBecomeDomainErrors:
    async def test_answer_trickling_past_the_timeout_is_a_timeout(self) -> None:
        outbound = outbound_for(httpx.Response(200, stream=Trickle()))
        started = time.monotonic()

        with pytest.raises(UpstreamTimeout, match=r"no answer within 0\.5 s"):
            await outbound.send("GET", "http://upstream.test/slow", timeout_seconds=0.5)

        assert time.monotonic() - started < 2

    async def test_broken_content_encoding_is_a_bad_response(self) -> None:
        stream = httpx.ByteStream(b"not gzip")
        response = httpx.Response(200, headers={"content-encoding": "gzip"}, stream=stream)

        with pytest.raises(BadUpstreamResponse, match="could not be decoded"):
            await outbound_for(response).send("GET", "http://upstream.test/token")

    async def test_answer_larger_than_the_cap_is_a_bad_response(self) -> None:
        outbound = outbound_for(httpx.Response(200, content=b"x" * 100), max_response_bytes=10)

        with pytest.raises(BadUpstreamResponse, match="larger than 10 bytes"):
            await outbound.send("GET", "http://upstream.test/token")

    @pytest.mark.parametrize(
        "url",
        ["ftp://upstream.test/", "/relative", "http:///no-host", "http://[::1", "http://h:port/"],
    )
    async def test_malformed_url_is_a_binding_error(self, url: str) -> None:
        with pytest.raises(BindingError, match="URL"):
            await outbound_for(httpx.Response(200)).send("GET", url)

    async def test_header_that_cannot_be_sent_is_a_binding_error_without_its_value(self) -> None:
        with pytest.raises(BindingError) as raised:
            await outbound_for(httpx.Response(200)).send(
                "GET", "http://upstream.test/", headers={"X-Key": f"\u2603{CANARY}"}
            )

        assert CANARY not in raised.value.message

    async def test_refused_connection_is_unreachable_without_the_query(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        # Nothing listens on the port now.
        outbound = Outbound(egress_allow="127.0.0.0/8")
        try:
            with pytest.raises(UpstreamUnreachable) as raised:
                await outbound.send("POST", f"http://127.0.0.1:{port}/token?key={CANARY}")
        finally:
            await outbound.aclose()

        assert raised.value.message.startswith("POST 127.0.0.1/token: connection failed")
        assert CANARY not in raised.value.message

    @pytest.mark.parametrize("follow_redirects", [True, False], ids=["followed", "answered"])
    @pytest.mark.parametrize(
        "location",
        [f"http:127.0.0.2/echo?k={CANARY}", f"https:127.0.0.2/{CANARY}", f"http://xn--/{CANARY}"],
        ids=["http-no-slashes", "https-no-slashes", "bad-idna"],
    )
    async def test_redirect_to_an_invalid_url_is_a_bad_response(
        self, location: str, follow_redirects: bool
    ) -> None:
        # httpx parses every redirect's Location, followed or not; these raised InvalidURL or
        # IDNAError through the run (a 500) before.
        async def redirecting(scope: dict, receive: object, send: Any) -> None:
            if scope["type"] != "http":
                return
            headers = [(b"location", location.encode()), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 302, "headers": headers})
            await send({"type": "http.response.body", "body": b""})

        outbound = Outbound(egress_allow="127.0.0.0/8")
        try:
            with LoopbackServer(redirecting, lifespan="off") as server:
                with pytest.raises(BadUpstreamResponse) as raised:
                    await outbound.send(
                        "GET", f"{server.url}/start", follow_redirects=follow_redirects
                    )
        finally:
            await outbound.aclose()

        assert raised.value.status_code == 502
        assert "redirects to an invalid URL" in raised.value.message
        assert CANARY not in raised.value.message


class TestAnswers:
    async def test_answer_is_kept_whole_with_lowercase_headers(self) -> None:
        response = httpx.Response(201, headers={"X-Thing": "1"}, json={"access_token": "t"})

        answer = await outbound_for(response).send("POST", "http://upstream.test/token")

        assert answer.status == 201
        assert answer.headers["x-thing"] == "1"
        assert answer.content == b'{"access_token":"t"}'
        assert answer.content_type == "application/json"
