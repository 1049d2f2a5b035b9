"""The token endpoint client: client authentication, answers, OAuth errors that quote nothing
that was sent."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from app.connect.client import TokenEndpointError, client_credentials, token_request
from app.providers.resolve import resolve_provider
from tests.conftest import CLIENT_ID, CLIENT_SECRET, TokenServer
from tests.connect.helpers import connected_secret


async def _setup(client: httpx.AsyncClient, app: FastAPI, server: TokenServer, auth: str) -> None:
    await connected_secret(
        client,
        app,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        token_url=server.token_url,
        client_auth=auth,
    )


@pytest.mark.parametrize("auth", ["basic", "post"])
async def test_refresh_grant_with_client_auth(
    client: httpx.AsyncClient, app: FastAPI, token_server: TokenServer, auth: str
) -> None:
    await _setup(client, app, token_server, auth)
    state = app.state
    async with state.session_factory() as session:
        provider = await resolve_provider(session, "acme")
        credentials = await client_credentials(session, state.keyring, state.settings, provider)
    refresh_token = token_server.state.issue_refresh_token(CLIENT_ID)
    answer = await token_request(
        state.runner.outbound,
        credentials,
        provider,
        {"grant_type": "refresh_token", "refresh_token": refresh_token},
    )
    assert token_server.state.is_active(answer["access_token"])
    assert CLIENT_SECRET not in repr(credentials)


async def test_oauth_error_quotes_nothing_sent(
    client: httpx.AsyncClient, app: FastAPI, token_server: TokenServer
) -> None:
    await _setup(client, app, token_server, "basic")
    state = app.state
    async with state.session_factory() as session:
        provider = await resolve_provider(session, "acme")
        credentials = await client_credentials(session, state.keyring, state.settings, provider)
    canary = "rt-canary-never-issued-5b1e"
    with pytest.raises(TokenEndpointError) as raised:
        await token_request(
            state.runner.outbound,
            credentials,
            provider,
            {"grant_type": "refresh_token", "refresh_token": canary},
        )
    assert raised.value.error == "invalid_grant"
    assert raised.value.upstream_status == 400
    text = f"{raised.value.message} {raised.value.error_description} {raised.value.to_body()}"
    assert canary not in text and CLIENT_SECRET not in text
