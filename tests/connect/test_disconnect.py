"""Disconnect: RFC 7009 revocation at the provider, then the tokens cleared locally (also when
the revocation fails, which the answer reports)."""

from __future__ import annotations

import logging

import httpx
import pytest
from fastapi import FastAPI

from tests.auth.conftest import Callers
from tests.auth.conftest import callers as callers  # the fixture, for this module
from tests.conftest import CLIENT_ID, TokenServer, create_secret, secret_value
from tests.connect.device_setup import SECRET, connect_by_device, connected_secret_at


@pytest.fixture
async def connected(
    client: httpx.AsyncClient, app: FastAPI, token_server: TokenServer
) -> TokenServer:
    await connected_secret_at(client, app, token_server)
    await connect_by_device(client)
    return token_server


async def disconnect(client: httpx.AsyncClient, name: str = SECRET) -> httpx.Response:
    return await client.delete(f"/v1/secrets/{name}/connection")


class TestDisconnect:
    async def test_revokes_at_the_provider_then_clears(
        self, client: httpx.AsyncClient, connected: TokenServer
    ) -> None:
        access_token = await secret_value(client, SECRET)
        (refresh_token,) = connected.state.live_refresh_tokens(CLIENT_ID)
        response = await disconnect(client)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body == {
            "secret": SECRET,
            "disconnected": True,
            "revocation": {"attempted": True, "revoked": True, "message": None},
        }
        # The provider says so too (RFC 7662 introspection).
        assert not connected.state.is_active(refresh_token)
        assert not connected.state.is_active(access_token)
        assert connected.state.revocations == [
            {"client_id": CLIENT_ID, "token_type_hint": "refresh_token", "kind": "refresh_token"}
        ]
        assert await secret_value(client, SECRET) is None
        versions = (await client.get(f"/v1/secrets/{SECRET}/versions")).json()
        assert "disconnect" in str(versions)
        for text in (response.text, str(versions)):
            assert refresh_token not in text and access_token not in text

    async def test_a_failed_revocation_still_disconnects_and_says_so(
        self, client: httpx.AsyncClient, connected: TokenServer
    ) -> None:
        (refresh_token,) = connected.state.live_refresh_tokens(CLIENT_ID)
        connected.state.revocation_fault = "http_503"
        response = await disconnect(client)
        assert response.status_code == 200, response.text
        revocation = response.json()["revocation"]
        assert revocation["attempted"] is True
        assert revocation["revoked"] is False
        assert "503" in revocation["message"]
        assert refresh_token not in response.text
        assert await secret_value(client, SECRET) is None
        assert connected.state.is_active(refresh_token)  # the provider never heard of it

    async def test_without_revocation_endpoint_clears_and_says_why(
        self, client: httpx.AsyncClient, app: FastAPI, token_server: TokenServer
    ) -> None:
        await connected_secret_at(client, app, token_server, revocation_url=None)
        await connect_by_device(client)
        response = await disconnect(client)
        assert response.status_code == 200, response.text
        revocation = response.json()["revocation"]
        assert revocation["attempted"] is False
        assert "no revocation endpoint" in revocation["message"]
        assert await secret_value(client, SECRET) is None
        assert token_server.state.revocations == []

    async def test_connecting_again_after_a_disconnect(
        self, client: httpx.AsyncClient, connected: TokenServer
    ) -> None:
        await disconnect(client)
        await connect_by_device(client)
        assert connected.state.is_active(await secret_value(client, SECRET))

    async def test_an_ordinary_secret_is_a_409(
        self, client: httpx.AsyncClient, connected: TokenServer
    ) -> None:
        await create_secret(client, "PLAIN", "value")
        response = await disconnect(client, "PLAIN")
        assert response.status_code == 409
        assert "not a connected secret" in response.json()["error"]["message"]

    async def test_unknown_secret_is_a_404(
        self, client: httpx.AsyncClient, connected: TokenServer
    ) -> None:
        assert (await disconnect(client, "NOPE")).status_code == 404


class TestPermissions:
    async def test_secrets_connect_of_the_secret_may_disconnect(
        self, callers: Callers, connected: TokenServer
    ) -> None:
        caller = await callers.holding(f"secrets.connect:{SECRET}")
        assert (await disconnect(caller)).status_code == 200

    async def test_secrets_manage_may_disconnect(
        self, callers: Callers, connected: TokenServer
    ) -> None:
        caller = await callers.holding("secrets.manage")
        assert (await disconnect(caller)).status_code == 200

    async def test_another_secrets_connect_may_not(
        self, client: httpx.AsyncClient, callers: Callers, connected: TokenServer
    ) -> None:
        caller = await callers.holding("secrets.connect:OTHER", f"secrets.read:{SECRET}")
        response = await disconnect(caller)
        assert response.status_code == 403
        assert connected.state.revocations == []
        assert await secret_value(client, SECRET) is not None

    async def test_anonymous_needs_a_credential(
        self, anonymous_client: httpx.AsyncClient, connected: TokenServer
    ) -> None:
        response = await anonymous_client.delete(f"/v1/secrets/{SECRET}/connection")
        assert response.status_code == 401
        message = response.json()["error"]["message"]
        assert f"secrets.connect:{SECRET}" in message and "secrets.manage" in message
        assert connected.state.revocations == []


@pytest.fixture
def debug_log(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    for name in list(logging.root.manager.loggerDict):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


async def test_refresh_token_is_in_no_log(
    client: httpx.AsyncClient, connected: TokenServer, debug_log: pytest.LogCaptureFixture
) -> None:
    (refresh_token,) = connected.state.live_refresh_tokens(CLIENT_ID)
    connected.state.revocation_fault = "http_500"
    await disconnect(client)
    assert refresh_token not in debug_log.text
