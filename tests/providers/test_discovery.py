"""Discovery inside `resolve_provider`: OpenID Connect first, RFC 8414 second, the issuer check,
the cache (one fetch, re-fetched after a failure, `forget`, the TTL) and the egress guard, against
a real metadata server on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from app.outbound import Outbound
from app.providers.discovery import DiscoveryCache, DiscoveryFailed, discovery_urls
from app.providers.resolve import ResolvedProvider, resolve_provider
from tests.auth.conftest import error_of
from tests.providers.conftest import (
    OIDC_PATH,
    RFC8414_PATH,
    MetadataServer,
    client_secrets,
    create_provider,
)


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def outbound() -> AsyncIterator[Outbound]:
    """An outbound client whose egress guard opens loopback (as the tests' settings do)."""
    client = Outbound(egress_allow="127.0.0.0/8,::1", default_timeout_seconds=5)
    yield client
    await client.aclose()


async def with_issuer(client: httpx.AsyncClient, issuer: str, name: str = "idp") -> None:
    """A provider that relies on `issuer`'s discovery document for every endpoint."""
    await client_secrets(client)
    await create_provider(
        client,
        name=name,
        issuer=issuer,
        client_id_secret="CLIENT_ID",
        client_secret_secret="CLIENT_SECRET",
    )


async def resolve(
    app: FastAPI, outbound: Outbound | None, cache: DiscoveryCache, name: str = "idp"
) -> ResolvedProvider:
    async with app.state.session_factory() as session:
        return await resolve_provider(session, name, outbound, cache=cache)


class TestDiscoveryUrls:
    def test_oidc_appends_and_rfc8414_inserts(self) -> None:
        assert discovery_urls("https://idp.example.com/realms/x/") == (
            "https://idp.example.com/realms/x/.well-known/openid-configuration",
            "https://idp.example.com/.well-known/oauth-authorization-server/realms/x",
        )
        assert discovery_urls("https://idp.example.com") == (
            "https://idp.example.com/.well-known/openid-configuration",
            "https://idp.example.com/.well-known/oauth-authorization-server",
        )


class TestResolve:
    async def test_openid_configuration_fills_every_missing_endpoint(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        metadata_server: MetadataServer,
        outbound: Outbound,
    ) -> None:
        issuer = f"{metadata_server.url}/realm"
        metadata_server.documents[f"/realm{OIDC_PATH}"] = metadata_server.metadata(issuer)
        await with_issuer(client, issuer)

        resolved = await resolve(app, outbound, DiscoveryCache())

        assert resolved.issuer == issuer
        assert resolved.authorization_url == f"{metadata_server.url}/authorize"
        assert resolved.token_url == f"{metadata_server.url}/token"
        assert resolved.revocation_url == f"{metadata_server.url}/revoke"
        assert resolved.device_authorization_url == f"{metadata_server.url}/device"
        assert resolved.jwks_uri == f"{metadata_server.url}/jwks"
        assert metadata_server.requests == [f"/realm{OIDC_PATH}"]

    async def test_explicit_urls_win_over_the_document(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        metadata_server: MetadataServer,
        outbound: Outbound,
    ) -> None:
        issuer = metadata_server.url
        metadata_server.documents[OIDC_PATH] = metadata_server.metadata(issuer)
        await client_secrets(client)
        await create_provider(
            client,
            name="idp",
            issuer=issuer,
            token_url="https://tokens.example.com/token",
            client_id_secret="CLIENT_ID",
            client_secret_secret="CLIENT_SECRET",
        )

        resolved = await resolve(app, outbound, DiscoveryCache())

        assert resolved.token_url == "https://tokens.example.com/token"
        assert resolved.authorization_url == f"{metadata_server.url}/authorize"

    async def test_a_provider_with_every_url_fetches_nothing(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        metadata_server: MetadataServer,
        outbound: Outbound,
    ) -> None:
        await client_secrets(client)
        urls = {
            key.replace("_endpoint", "_url") if key != "jwks_uri" else key: value
            for key, value in metadata_server.metadata("x").items()
            if key.endswith("_endpoint") or key == "jwks_uri"
        }
        await create_provider(
            client,
            name="idp",
            issuer=metadata_server.url,
            client_id_secret="CLIENT_ID",
            client_secret_secret="CLIENT_SECRET",
            **urls,
        )

        resolved = await resolve(app, outbound, DiscoveryCache())

        assert resolved.token_url == f"{metadata_server.url}/token"
        assert metadata_server.requests == []

    async def test_rfc8414_is_tried_when_openid_configuration_fails(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        metadata_server: MetadataServer,
        outbound: Outbound,
    ) -> None:
        issuer = f"{metadata_server.url}/tenant"
        metadata_server.documents[f"{RFC8414_PATH}/tenant"] = metadata_server.metadata(issuer)
        await with_issuer(client, issuer)

        resolved = await resolve(app, outbound, DiscoveryCache())

        assert resolved.token_url == f"{metadata_server.url}/token"
        assert metadata_server.requests == [f"/tenant{OIDC_PATH}", f"{RFC8414_PATH}/tenant"]

    async def test_a_document_naming_another_issuer_is_refused(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        metadata_server: MetadataServer,
        outbound: Outbound,
    ) -> None:
        issuer = metadata_server.url
        # A good RFC 8414 document is there too: a mismatch is refused, not worked around.
        metadata_server.documents[OIDC_PATH] = metadata_server.metadata("https://evil.example")
        metadata_server.documents[RFC8414_PATH] = metadata_server.metadata(issuer)
        await with_issuer(client, issuer)
        cache = DiscoveryCache()

        with pytest.raises(DiscoveryFailed) as raised:
            await resolve(app, outbound, cache)

        assert raised.value.status_code == 502 and raised.value.error_type == "discovery_failed"
        assert "https://evil.example" in raised.value.message and issuer in raised.value.message
        assert metadata_server.requests == [OIDC_PATH]
        assert cache.cached(issuer) is None

    async def test_a_trailing_slash_is_a_different_issuer(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        metadata_server: MetadataServer,
        outbound: Outbound,
    ) -> None:
        issuer = f"{metadata_server.url}/"
        metadata_server.documents[OIDC_PATH] = metadata_server.metadata(metadata_server.url)
        await with_issuer(client, issuer)

        with pytest.raises(DiscoveryFailed, match="trailing"):
            await resolve(app, outbound, DiscoveryCache())

    @pytest.mark.parametrize(
        ("document", "why"),
        [
            ("not json", "not JSON"),
            ("[1, 2]", "not a JSON object"),
        ],
    )
    async def test_an_unusable_answer_from_both_urls_says_why(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        metadata_server: MetadataServer,
        outbound: Outbound,
        document: str,
        why: str,
    ) -> None:
        metadata_server.documents[OIDC_PATH] = document
        metadata_server.faults[RFC8414_PATH] = 500
        await with_issuer(client, metadata_server.url)

        with pytest.raises(DiscoveryFailed) as raised:
            await resolve(app, outbound, DiscoveryCache())

        assert why in raised.value.message and "HTTP 500" in raised.value.message
        assert "explicitly" in raised.value.message

    async def test_an_endpoint_that_is_not_a_url_is_refused(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        metadata_server: MetadataServer,
        outbound: Outbound,
    ) -> None:
        document = metadata_server.metadata(metadata_server.url)
        document["token_endpoint"] = "javascript:alert(1)"
        metadata_server.documents[OIDC_PATH] = document
        await with_issuer(client, metadata_server.url)

        with pytest.raises(DiscoveryFailed, match="token_endpoint"):
            await resolve(app, outbound, DiscoveryCache())

    async def test_without_outbound_only_a_cached_document_helps(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        metadata_server: MetadataServer,
        outbound: Outbound,
    ) -> None:
        metadata_server.documents[OIDC_PATH] = metadata_server.metadata(metadata_server.url)
        await with_issuer(client, metadata_server.url)
        cache = DiscoveryCache()

        assert (await resolve(app, None, cache)).token_url is None
        await resolve(app, outbound, cache)
        assert (await resolve(app, None, cache)).token_url == f"{metadata_server.url}/token"
        assert metadata_server.hits(OIDC_PATH) == 1


class TestCache:
    async def test_two_resolves_fetch_once(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        metadata_server: MetadataServer,
        outbound: Outbound,
    ) -> None:
        metadata_server.documents[OIDC_PATH] = metadata_server.metadata(metadata_server.url)
        await with_issuer(client, metadata_server.url)
        cache = DiscoveryCache()

        first = await resolve(app, outbound, cache)
        second = await resolve(app, outbound, cache)

        assert first == second
        assert metadata_server.hits(OIDC_PATH) == 1

    async def test_a_failed_fetch_is_not_cached(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        metadata_server: MetadataServer,
        outbound: Outbound,
    ) -> None:
        metadata_server.faults[OIDC_PATH] = 503
        metadata_server.faults[RFC8414_PATH] = 503
        await with_issuer(client, metadata_server.url)
        cache = DiscoveryCache()
        with pytest.raises(DiscoveryFailed, match="HTTP 503"):
            await resolve(app, outbound, cache)

        metadata_server.faults.clear()
        metadata_server.documents[OIDC_PATH] = metadata_server.metadata(metadata_server.url)
        resolved = await resolve(app, outbound, cache)

        assert resolved.token_url == f"{metadata_server.url}/token"
        assert metadata_server.hits(OIDC_PATH) == 2

    async def test_forget_and_the_ttl_make_it_fetch_again(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        metadata_server: MetadataServer,
        outbound: Outbound,
    ) -> None:
        metadata_server.documents[OIDC_PATH] = metadata_server.metadata(metadata_server.url)
        await with_issuer(client, metadata_server.url)
        clock = Clock()
        cache = DiscoveryCache(ttl_seconds=3600, clock=clock)
        await resolve(app, outbound, cache)

        # An endpoint of the document failed: the caller forgets it, the next use re-fetches.
        moved = metadata_server.metadata(metadata_server.url)
        moved["token_endpoint"] = f"{metadata_server.url}/token2"
        metadata_server.documents[OIDC_PATH] = moved
        cache.forget(metadata_server.url)
        assert (await resolve(app, outbound, cache)).token_url == f"{metadata_server.url}/token2"

        clock.now += 3599
        await resolve(app, outbound, cache)
        assert metadata_server.hits(OIDC_PATH) == 2
        clock.now += 1
        await resolve(app, outbound, cache)
        assert metadata_server.hits(OIDC_PATH) == 3


class TestEgressGuard:
    async def test_a_discovery_url_the_guard_refuses_is_never_fetched(
        self, app: FastAPI, client: httpx.AsyncClient, metadata_server: MetadataServer
    ) -> None:
        metadata_server.documents[OIDC_PATH] = metadata_server.metadata(metadata_server.url)
        await with_issuer(client, metadata_server.url)
        guarded = Outbound(egress_allow="")
        try:
            with pytest.raises(DiscoveryFailed) as raised:
                await resolve(app, guarded, DiscoveryCache())
        finally:
            await guarded.aclose()

        assert "egress guard" in raised.value.message and "loopback" in raised.value.message
        assert metadata_server.requests == []


class TestEndpointsRoute:
    async def test_answers_the_endpoints_found_by_discovery(
        self, client: httpx.AsyncClient, metadata_server: MetadataServer
    ) -> None:
        metadata_server.documents[OIDC_PATH] = metadata_server.metadata(metadata_server.url)
        await with_issuer(client, metadata_server.url)

        first = await client.get("/v1/providers/idp/endpoints")
        second = await client.get("/v1/providers/idp/endpoints")

        assert first.status_code == 200, first.text
        assert first.json() == second.json()
        assert first.json()["token_url"] == f"{metadata_server.url}/token"
        # The process's cache served the second.
        assert metadata_server.hits(OIDC_PATH) == 1

    async def test_a_mismatched_issuer_is_502_naming_both(
        self, client: httpx.AsyncClient, metadata_server: MetadataServer
    ) -> None:
        metadata_server.documents[OIDC_PATH] = metadata_server.metadata("https://other.example")
        await with_issuer(client, metadata_server.url)

        error = error_of(await client.get("/v1/providers/idp/endpoints"), 502)

        assert error["type"] == "discovery_failed"
        assert "https://other.example" in error["message"]
        assert metadata_server.url in error["message"]

    async def test_a_refused_address_is_502_saying_so(self, client: httpx.AsyncClient) -> None:
        await with_issuer(client, "http://10.0.0.1/realm")

        error = error_of(await client.get("/v1/providers/idp/endpoints"), 502)

        assert error["type"] == "discovery_failed"
        assert "egress guard" in error["message"] and "private" in error["message"]

    async def test_an_unknown_provider_is_404(self, client: httpx.AsyncClient) -> None:
        assert error_of(await client.get("/v1/providers/nope/endpoints"), 404)
