"""Helpers of the device grant and disconnect tests: a provider at the bundled token server, a
connected secret, and a person who enters the user code at the verification page."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapi import FastAPI

from app.providers.models import Provider
from tests.conftest import CLIENT_ID, CLIENT_SECRET, TokenServer, create_secret
from tests.demo.browser import press

PROVIDER = "local"
SECRET = "CONNECTED"


async def add_provider(
    app: FastAPI, server: TokenServer, *, name: str = PROVIDER, **overrides: Any
) -> None:
    """A provider row pointing at the token server (the providers API is engineer A's)."""
    fields: dict[str, Any] = {
        "name": name,
        "authorization_url": f"{server.url}/oauth/authorize",
        "token_url": server.token_url,
        "revocation_url": f"{server.url}/oauth/revoke",
        "device_authorization_url": f"{server.url}/oauth/device_authorization",
        "client_auth": "basic",
        "client_id_secret": "CLIENT_ID",
        "client_secret_secret": "CLIENT_SECRET",
        "scopes": ["read"],
        **overrides,
    }
    async with app.state.session_factory() as session, session.begin():
        session.add(Provider(**fields))


async def connected_secret_at(
    client: httpx.AsyncClient, app: FastAPI, server: TokenServer, **provider: Any
) -> None:
    """Client credentials, the provider and the connected secret SECRET (not connected yet)."""
    server.state.device_interval = 1
    await create_secret(client, "CLIENT_ID", CLIENT_ID, environment_specific=False)
    await create_secret(client, "CLIENT_SECRET", CLIENT_SECRET, environment_specific=False)
    await add_provider(app, server, **provider)
    response = await client.post("/v1/secrets", json={"name": SECRET, "provider": PROVIDER})
    assert response.status_code == 201, response.text


def _enter_code(started: dict[str, Any], button: str) -> httpx.Response:
    with httpx.Client(timeout=10.0) as browser:
        page = browser.get(started["verification_uri"])
        confirm = press(browser, page, "Continue", user_code=started["user_code"])
        assert confirm.status_code == 200, confirm.text
        return press(browser, confirm, button)


async def person_decides(started: dict[str, Any], button: str = "Allow") -> httpx.Response:
    """The person opens the verification page, types the code and presses `button`."""
    return await asyncio.to_thread(_enter_code, started, button)


async def start(client: httpx.AsyncClient, name: str = SECRET) -> dict[str, Any]:
    """POST a device authorization; its answer."""
    response = await client.post(f"/v1/secrets/{name}/device-authorizations")
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def outcome(client: httpx.AsyncClient, started: dict[str, Any], seconds: float = 30) -> Any:
    """Wait until the flow is no longer pending; its status body."""
    for _ in range(int(seconds * 10)):
        response = await client.get(started["status_url"])
        assert response.status_code == 200, response.text
        if response.json()["status"] != "pending":
            return response.json()
        await asyncio.sleep(0.1)
    raise AssertionError("the device grant is still pending")


async def connect_by_device(client: httpx.AsyncClient) -> dict[str, Any]:
    """Connect SECRET through the device grant; the final status."""
    started = await start(client)
    await person_decides(started)
    done = await outcome(client, started)
    assert done["status"] == "connected", done
    return dict(done)
