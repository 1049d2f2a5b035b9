"""The device grant (RFC 8628) end to end: tokenfarm asks the bundled token server for a user
code, a person enters it at the verification page, tokenfarm polls and stores the tokens."""

from __future__ import annotations

import asyncio
import itertools
import logging

import httpx
import pytest
from fastapi import FastAPI

from app.connect.device import DeviceAuthorization
from app.demo.token_server import DEVICE_CODE_GRANT
from app.errors import BadUpstreamResponse
from tests.auth.conftest import Callers
from tests.auth.conftest import callers as callers  # the fixture, for this module
from tests.conftest import TokenServer, secret_value
from tests.connect.device_setup import (
    PROVIDER,
    SECRET,
    connect_by_device,
    connected_secret_at,
    outcome,
    person_decides,
    start,
)


@pytest.fixture
def debug_log(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> pytest.LogCaptureFixture:
    """Capture every logger at DEBUG (after the app configured logging, hence `client`)."""
    caplog.set_level(logging.DEBUG)
    for name in list(logging.root.manager.loggerDict):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


@pytest.fixture
async def connectable(
    client: httpx.AsyncClient, app: FastAPI, token_server: TokenServer
) -> TokenServer:
    await connected_secret_at(client, app, token_server)
    return token_server


def polls(server: TokenServer) -> list[float]:
    """When each device-code poll reached the token server."""
    return [r["at"] for r in server.state.requests if r["grant_type"] == DEVICE_CODE_GRANT]


async def metadata(client: httpx.AsyncClient) -> dict[str, object]:
    response = await client.get(f"/v1/secrets/{SECRET}")
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


class TestDeviceGrant:
    async def test_connects_and_the_secret_then_refreshes(
        self, client: httpx.AsyncClient, connectable: TokenServer
    ) -> None:
        started = await start(client)
        assert set(started) >= {"user_code", "verification_uri", "expires_in", "interval"}
        assert started["interval"] == 1
        assert "device_code" not in started
        await person_decides(started)
        assert (await outcome(client, started))["status"] == "connected"
        access_token = await secret_value(client, SECRET)
        assert connectable.state.is_active(access_token)
        # The refresh token was stored beside it: the bound refresher rotates it.
        (refresh_token,) = connectable.state.live_refresh_tokens("client-canary-7f3a9b")
        refreshed = await client.get(f"/refresh/{SECRET}")
        assert refreshed.status_code == 200, refreshed.text
        assert not connectable.state.is_active(refresh_token)
        assert await secret_value(client, SECRET) != access_token

    async def test_polls_at_the_interval_and_slow_down_adds_five_seconds(
        self, client: httpx.AsyncClient, connectable: TokenServer
    ) -> None:
        connectable.state.force_slow_down(1)
        started = await start(client)
        # First poll (slow_down) after 1 s, the next after 6 s: then the person allows.
        for _ in range(100):
            if len(polls(connectable)) >= 2:
                break
            await asyncio.sleep(0.1)
        await person_decides(started)
        assert (await outcome(client, started))["status"] == "connected"
        times = polls(connectable)
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert gaps[0] >= 6 - 0.3, gaps  # after the slow_down: 1 + 5 seconds
        assert all(gap >= 6 - 0.3 for gap in gaps), gaps  # the interval stays longer
        errors = [r["error"] for r in connectable.state.requests]
        assert errors[0] == "slow_down"

    async def test_access_denied_leaves_the_secret_untouched(
        self, client: httpx.AsyncClient, connectable: TokenServer
    ) -> None:
        before = await metadata(client)
        started = await start(client)
        await person_decides(started, "Deny")
        done = await outcome(client, started)
        assert done["status"] == "denied"
        assert "declined" in done["message"]
        assert await metadata(client) == before
        assert await secret_value(client, SECRET) is None

    async def test_expired_token_leaves_the_secret_untouched(
        self, client: httpx.AsyncClient, connectable: TokenServer
    ) -> None:
        before = await metadata(client)
        started = await start(client)
        connectable.state.expire_device_codes()
        done = await outcome(client, started)
        assert done["status"] == "expired"
        assert await metadata(client) == before
        assert [r["error"] for r in connectable.state.requests] == ["expired_token"]

    async def test_stops_at_expires_in(
        self, client: httpx.AsyncClient, connectable: TokenServer
    ) -> None:
        connectable.state.device_expires_in = 2
        connectable.state.device_interval = 1
        started = await start(client)
        done = await outcome(client, started)
        assert done["status"] == "expired"
        assert len(polls(connectable)) <= 2

    async def test_a_second_connect_after_the_first_replaces_the_tokens(
        self, client: httpx.AsyncClient, connectable: TokenServer
    ) -> None:
        await connect_by_device(client)
        first = await secret_value(client, SECRET)
        await connect_by_device(client)
        assert await secret_value(client, SECRET) != first
        assert len(connectable.state.live_refresh_tokens("client-canary-7f3a9b")) == 2


class TestRefusals:
    async def test_provider_without_device_endpoint_is_a_409_saying_so(
        self, client: httpx.AsyncClient, app: FastAPI, token_server: TokenServer
    ) -> None:
        await connected_secret_at(client, app, token_server, device_authorization_url=None)
        response = await client.post(f"/v1/secrets/{SECRET}/device-authorizations")
        assert response.status_code == 409, response.text
        message = response.json()["error"]["message"]
        assert "device authorization endpoint" in message
        assert PROVIDER in message
        assert token_server.state.token_requests == 0

    async def test_needs_secrets_connect(
        self, anonymous_client: httpx.AsyncClient, connectable: TokenServer
    ) -> None:
        response = await anonymous_client.post(f"/v1/secrets/{SECRET}/device-authorizations")
        assert response.status_code == 401
        assert f"secrets.connect:{SECRET}" in response.json()["error"]["message"]

    async def test_secrets_manage_is_not_enough(
        self, callers: Callers, connectable: TokenServer
    ) -> None:
        caller = await callers.holding("secrets.manage")
        response = await caller.post(f"/v1/secrets/{SECRET}/device-authorizations")
        assert response.status_code == 403
        assert f"secrets.connect:{SECRET}" in response.json()["error"]["message"]
        assert connectable.state.device_codes == []

    async def test_an_ordinary_secret_is_a_409(
        self, client: httpx.AsyncClient, connectable: TokenServer
    ) -> None:
        response = await client.post("/v1/secrets/CLIENT_ID/device-authorizations")
        assert response.status_code == 409
        assert "not a connected secret" in response.json()["error"]["message"]

    async def test_unknown_flow_is_a_404(
        self, client: httpx.AsyncClient, connectable: TokenServer
    ) -> None:
        response = await client.get(f"/v1/secrets/{SECRET}/device-authorizations/nope")
        assert response.status_code == 404

    async def test_provider_refusal_is_a_502_naming_the_error(
        self, client: httpx.AsyncClient, connectable: TokenServer
    ) -> None:
        connectable.state.clients["client-canary-7f3a9b"] = "another-secret"
        response = await client.post(f"/v1/secrets/{SECRET}/device-authorizations")
        assert response.status_code == 502, response.text
        assert "invalid_client" in response.json()["error"]["message"]


class TestCanaries:
    async def test_device_code_and_tokens_appear_nowhere(
        self,
        client: httpx.AsyncClient,
        connectable: TokenServer,
        debug_log: pytest.LogCaptureFixture,
    ) -> None:
        started = await start(client)
        await person_decides(started)
        done = await outcome(client, started)
        (device_code,) = connectable.state.device_codes
        (refresh_token,) = connectable.state.live_refresh_tokens("client-canary-7f3a9b")
        texts = {
            "start answer": str(started),
            "status answer": str(done),
            "metadata": (await client.get(f"/v1/secrets/{SECRET}")).text,
            "versions": (await client.get(f"/v1/secrets/{SECRET}/versions")).text,
            "runs": (await client.get("/v1/runs")).text,
            "log": debug_log.text,
        }
        for where, text in texts.items():
            assert device_code not in text, f"the device code leaked into {where}"
            assert refresh_token not in text, f"the refresh token leaked into {where}"


class TestDeviceAuthorizationAnswer:
    """What a provider's device authorization answer must hold (RFC 8628 §3.2)."""

    def test_googles_verification_url_and_a_missing_interval(self) -> None:
        answer = {
            "device_code": "dc",
            "user_code": "ABCD-EFGH",
            "verification_url": "https://www.google.com/device",
            "expires_in": 1800,
        }
        parsed = DeviceAuthorization.from_answer(answer, "POST oauth2.googleapis.com")
        assert parsed.verification_uri == "https://www.google.com/device"
        assert parsed.interval == 5
        assert "dc" not in repr(parsed)

    def test_a_missing_user_code_is_a_bad_answer_naming_it(self) -> None:
        answer = {"device_code": "dc", "verification_uri": "https://x", "expires_in": 60}
        with pytest.raises(BadUpstreamResponse, match="user_code"):
            DeviceAuthorization.from_answer(answer, "POST x")

    def test_expires_in_is_capped_at_an_hour(self) -> None:
        answer = {
            "device_code": "dc",
            "user_code": "U",
            "verification_uri": "https://x",
            "expires_in": 86400,
        }
        assert DeviceAuthorization.from_answer(answer, "POST x").expires_in == 3600
