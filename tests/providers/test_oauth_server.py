"""Discovery against a real authorization server (django-oauth-toolkit, tests/oauth_server)."""

from __future__ import annotations

import httpx

from app.providers.discovery import discovery_cache
from tests.auth.conftest import error_of
from tests.oauth_server import OAuthServer
from tests.providers.conftest import client_secrets, create_provider


async def dot_provider(client: httpx.AsyncClient, server: OAuthServer) -> None:
    """A provider that takes its endpoints from DOT's discovery document."""
    # The provider process outlives a test: start from an empty cache for its issuer.
    discovery_cache.forget(server.issuer)
    await client_secrets(client)
    await create_provider(
        client,
        name="dot",
        issuer=server.issuer,
        client_id_secret="CLIENT_ID",
        client_secret_secret="CLIENT_SECRET",
    )


class TestDiscoveryAtDot:
    async def test_the_endpoints_come_from_its_openid_configuration(
        self, client: httpx.AsyncClient, oauth_server: OAuthServer
    ) -> None:
        await dot_provider(client, oauth_server)

        response = await client.get("/v1/providers/dot/endpoints")

        assert response.status_code == 200, response.text
        endpoints = response.json()
        assert endpoints["issuer"] == oauth_server.issuer
        assert endpoints["authorization_url"] == oauth_server.authorization_url
        assert endpoints["token_url"] == oauth_server.token_url
        assert endpoints["jwks_uri"] == oauth_server.jwks_url

    async def test_a_wrong_issuer_in_its_documents_is_refused(
        self, client: httpx.AsyncClient, oauth_server: OAuthServer
    ) -> None:
        await dot_provider(client, oauth_server)
        oauth_server.wrong_issuer_in_discovery(True)

        error = error_of(await client.get("/v1/providers/dot/endpoints"), 502)

        assert error["type"] == "discovery_failed"
        assert oauth_server.issuer in error["message"] and "must match" in error["message"]
        oauth_server.wrong_issuer_in_discovery(False)
        # Nothing was cached: once the server is right again, discovery works.
        assert (await client.get("/v1/providers/dot/endpoints")).status_code == 200
