"""Helpers of the connect tests: providers and connected secrets, set up as a user would."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI

from app.providers.models import Provider
from tests.conftest import create_secret


async def add_provider(app: FastAPI, name: str = "acme", **fields: Any) -> None:
    """A provider row (the providers API is another branch's; its table is on main)."""
    async with app.state.session_factory() as session, session.begin():
        session.add(Provider(name=name, **fields))


async def connected_secret(
    client: httpx.AsyncClient,
    app: FastAPI,
    *,
    name: str = "ACME_TOKEN",
    provider: str = "acme",
    client_id: str,
    client_secret: str | None,
    token_url: str,
    authorization_url: str | None = "https://auth.example.com/authorize",
    **provider_fields: Any,
) -> dict[str, Any]:
    """The client credentials as secrets, a provider using them, and a connected secret."""
    await create_secret(client, "ACME_CLIENT_ID", client_id, environment_specific=False)
    auth = provider_fields.pop("client_auth", "basic")
    if client_secret is not None:
        await create_secret(client, "ACME_CLIENT_SECRET", client_secret, environment_specific=False)
    await add_provider(
        app,
        provider,
        token_url=token_url,
        authorization_url=authorization_url,
        client_auth=auth,
        client_id_secret="ACME_CLIENT_ID",
        client_secret_secret="ACME_CLIENT_SECRET" if client_secret is not None else None,
        **provider_fields,
    )
    response = await client.post("/v1/secrets", json={"name": name, "provider": provider})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body
