"""A provider names the secrets that hold its credentials and never carries their values: not in
an answer, an error, the export or a log line."""

from __future__ import annotations

import logging

import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.configuration.export import export_document, render
from tests.conftest import create_secret
from tests.providers.conftest import OIDC_PATH, MetadataServer

CLIENT_ID = "client-id-canary-1b7c40"
CLIENT_SECRET = "client-secret-canary-e95d2a"


async def test_no_credential_value_leaves_through_providers(
    app: FastAPI,
    client: httpx.AsyncClient,
    settings: Settings,
    metadata_server: MetadataServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    await create_secret(client, "CLIENT_ID", CLIENT_ID, environment_specific=False)
    await create_secret(client, "CLIENT_SECRET", CLIENT_SECRET, environment_specific=False)
    metadata_server.documents[OIDC_PATH] = metadata_server.metadata("https://other.example")
    body = {
        "name": "idp",
        "issuer": metadata_server.url,
        "client_id_secret": "CLIENT_ID",
        "client_secret_secret": "CLIENT_SECRET",
    }

    answers = [
        await client.post("/v1/providers", json=body),
        await client.post("/v1/providers", json=body),  # 409
        await client.post("/v1/providers", json={**body, "name": "x", "client_auth": "none"}),
        await client.get("/v1/providers"),
        await client.get("/v1/providers/idp"),
        await client.get("/v1/providers/idp/endpoints"),  # 502: another issuer
        await client.put("/v1/providers/idp", json={"client_auth": "post"}),
    ]
    async with app.state.session_factory() as session:
        exported = render(await export_document(session, settings), settings)

    assert [a.status_code for a in answers] == [201, 409, 422, 200, 200, 502, 422]
    for text in [*(a.text for a in answers), exported, caplog.text]:
        assert CLIENT_ID not in text and CLIENT_SECRET not in text
    assert "CLIENT_SECRET" in answers[0].text  # the secret's name is shown, never its value
