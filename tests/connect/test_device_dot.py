"""The device grant and disconnect against a real authorization server from the package
registry (django-oauth-toolkit, tests/oauth_server): a public client, PKCE-era settings, refresh
tokens rotating with reuse protection, RFC 7009 revocation and RFC 7662 introspection."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.demo.token_server import DEVICE_CODE_GRANT
from app.providers.models import Provider
from tests.conftest import create_secret, secret_value
from tests.connect.device_setup import outcome, start
from tests.oauth_server import OAuthServer

SECRET = "DOT_TOKEN"


@pytest.fixture
async def dot_connectable(
    client: httpx.AsyncClient, app: FastAPI, oauth_server: OAuthServer
) -> OAuthServer:
    """A public DOT client for the device grant, a provider for it and the connected secret."""
    client_id, _ = oauth_server.create_client(confidential=False, grant_types="device_code")
    await create_secret(client, "DOT_CLIENT_ID", client_id, environment_specific=False)
    async with app.state.session_factory() as session, session.begin():
        session.add(
            Provider(
                name="dot",
                token_url=oauth_server.token_url,
                device_authorization_url=oauth_server.device_authorization_url,
                revocation_url=oauth_server.revocation_url,
                client_auth="none",
                client_id_secret="DOT_CLIENT_ID",
                scopes=["read"],
            )
        )
    response = await client.post("/v1/secrets", json={"name": SECRET, "provider": "dot"})
    assert response.status_code == 201, response.text
    return oauth_server


async def approve(server: OAuthServer, started: dict[str, Any], allow: bool = True) -> None:
    await asyncio.to_thread(server.approve_device, started["user_code"], allow=allow)


def device_polls(server: OAuthServer) -> list[dict[str, Any]]:
    return [e for e in server.request_log() if e["grant_type"] == DEVICE_CODE_GRANT]


class TestDeviceGrantAtDot:
    async def test_connects_after_a_slow_down_and_refreshes_rotating(
        self, client: httpx.AsyncClient, dot_connectable: OAuthServer
    ) -> None:
        dot_connectable.slow_down_next(1)
        began = time.monotonic()
        started = await start(client, SECRET)
        assert started["verification_uri"] == dot_connectable.device_verification_url
        await approve(dot_connectable, started)
        done = await outcome(client, started)
        assert done["status"] == "connected", done
        # interval 1 s, then 1 + 5 s after the slow_down
        assert time.monotonic() - began >= 6
        polls = device_polls(dot_connectable)
        assert polls[0]["fault"] == "slow_down"
        assert len(polls) == 2, polls
        access_token = await secret_value(client, SECRET)
        assert dot_connectable.introspect(access_token)["active"] is True
        # The refresh token stored beside it works, and rotates.
        for _ in range(2):
            refreshed = await client.get(f"/refresh/{SECRET}")
            assert refreshed.status_code == 200, refreshed.text
        presented = dot_connectable.refresh_tokens_presented()
        assert len(presented) == len(set(presented)) == 2
        assert dot_connectable.introspect(await secret_value(client, SECRET))["active"] is True

    async def test_access_denied_stores_nothing(
        self, client: httpx.AsyncClient, dot_connectable: OAuthServer
    ) -> None:
        before = (await client.get(f"/v1/secrets/{SECRET}")).json()
        started = await start(client, SECRET)
        await approve(dot_connectable, started, allow=False)
        done = await outcome(client, started)
        assert done["status"] == "denied", done
        assert (await client.get(f"/v1/secrets/{SECRET}")).json() == before
        assert await secret_value(client, SECRET) is None

    async def test_disconnect_revokes_at_dot(
        self, client: httpx.AsyncClient, dot_connectable: OAuthServer
    ) -> None:
        started = await start(client, SECRET)
        await approve(dot_connectable, started)
        assert (await outcome(client, started))["status"] == "connected"
        access_token = await secret_value(client, SECRET)
        response = await client.delete(f"/v1/secrets/{SECRET}/connection")
        assert response.status_code == 200, response.text
        assert response.json()["revocation"] == {
            "attempted": True,
            "revoked": True,
            "message": None,
        }
        # DOT revokes the refresh token's access token with it.
        assert dot_connectable.introspect(access_token)["active"] is False
        assert await secret_value(client, SECRET) is None
