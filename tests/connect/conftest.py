"""Fixtures of the connect tests: tokenfarm with a public URL, and a secret connected to the
django-oauth-toolkit provider (tests/oauth_server)."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from tests.conftest import create_secret
from tests.connect.helpers import add_provider
from tests.oauth_server import OAuthServer

PUBLIC_URL = "http://tokenfarm.test"  # the test clients' base URL: cookies and links agree
CALLBACK_URL = f"{PUBLIC_URL}/connect/callback"
RETURN_ORIGIN = "https://app.example.com"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings with a public URL and one allowed return origin."""
    return settings.model_copy(
        update={"public_url": PUBLIC_URL, "connect_return_origins": RETURN_ORIGIN}
    )


@dataclass
class Dot:
    """A secret connected (not yet consented) to the DOT provider."""

    server: OAuthServer
    client_id: str
    client_secret: str
    secret: str = "DOT_TOKEN"


@pytest.fixture
async def dot(client: httpx.AsyncClient, app: FastAPI, oauth_server: OAuthServer) -> Dot:
    """A confidential DOT client whose redirect URI is tokenfarm's callback, a provider for it
    (with its issuer and JWKS: ID tokens are verified) and the connected secret DOT_TOKEN."""
    client_id, client_secret = oauth_server.create_client(redirect_uris=[CALLBACK_URL])
    assert client_secret is not None
    await create_secret(client, "DOT_CLIENT_ID", client_id, environment_specific=False)
    await create_secret(client, "DOT_CLIENT_SECRET", client_secret, environment_specific=False)
    await add_provider(
        app,
        "dot",
        issuer=oauth_server.issuer,
        authorization_url=oauth_server.authorization_url,
        token_url=oauth_server.token_url,
        revocation_url=oauth_server.revocation_url,
        jwks_uri=oauth_server.jwks_url,
        client_auth="basic",
        client_id_secret="DOT_CLIENT_ID",
        client_secret_secret="DOT_CLIENT_SECRET",
        scopes=["openid", "email", "read"],
    )
    response = await client.post("/v1/secrets", json={"name": "DOT_TOKEN", "provider": "dot"})
    assert response.status_code == 201, response.text
    return Dot(oauth_server, client_id, client_secret)
