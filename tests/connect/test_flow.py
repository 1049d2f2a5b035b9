"""The authorization-code flow against a real provider (django-oauth-toolkit), driven over
HTTP as a browser would: a connect link, the provider's consent page, the callback."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update

from app.connect.models import ConnectState
from app.connect.tokens import refresh_token_of
from app.db import utcnow
from app.events import Event, SecretConnected
from app.providers.discovery import discovery_cache
from app.providers.models import Provider
from tests.conftest import create_secret
from tests.connect.conftest import CALLBACK_URL, PUBLIC_URL, RETURN_ORIGIN, Dot
from tests.oauth_server import OAuthServer, sha256_hex


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The consenting person's browser at tokenfarm: no credential, its own cookie jar."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as http:
        yield http


async def link(client: httpx.AsyncClient, secret: str = "DOT_TOKEN", **body: object) -> str:
    response = await client.post(f"/v1/secrets/{secret}/connect-links", json=body)
    assert response.status_code == 201, response.text
    url: str = response.json()["url"]
    assert url.startswith(f"{PUBLIC_URL}/connect/link?token=")
    return url


async def to_provider(browser: httpx.AsyncClient, url: str) -> str:
    """Open a connect link: the redirect to the provider's authorization endpoint."""
    response = await browser.get(url)
    assert response.status_code == 302, response.text
    location: str = response.headers["location"]
    return location


async def consent(dot: Dot, authorize_url: str, allow: bool = True) -> str:
    """Alice consents (or not) at the provider; the redirect back to tokenfarm's callback."""
    location = await asyncio.to_thread(dot.server.consent, authorize_url, allow=allow)
    assert location.startswith(CALLBACK_URL), location
    return location


async def connect(
    client: httpx.AsyncClient, browser: httpx.AsyncClient, dot: Dot
) -> tuple[httpx.Response, str]:
    """The whole flow: link, provider, consent, callback -> (the callback's answer, its URL)."""
    callback = await consent(dot, await to_provider(browser, await link(client)))
    return await browser.get(callback), callback


def token_calls(dot: Dot) -> int:
    return len(dot.server.request_log())


async def meta(client: httpx.AsyncClient, name: str = "DOT_TOKEN") -> dict[str, object]:
    body: dict[str, object] = (await client.get(f"/v1/secrets/{name}")).json()
    return body


class TestConnect:
    async def test_connects_and_keeps_refreshing(
        self, client: httpx.AsyncClient, browser: httpx.AsyncClient, app: FastAPI, dot: Dot
    ) -> None:
        events: list[Event] = []
        app.state.events.subscribe(events.append)
        authorize = await to_provider(browser, await link(client))
        query = parse_qs(urlsplit(authorize).query)
        assert query["response_type"] == ["code"]
        assert query["redirect_uri"] == [CALLBACK_URL]
        assert query["code_challenge_method"] == ["S256"]
        assert len(query["state"][0]) >= 43 and query["scope"] == ["openid email read"]
        answer = await browser.get(await consent(dot, authorize))
        assert answer.status_code == 200, answer.text
        assert "DOT_TOKEN is connected" in answer.text
        assert answer.headers["referrer-policy"] == "no-referrer"
        value = (await client.get("/v1/secrets/DOT_TOKEN/value")).json()
        assert dot.server.introspect(value["value"])["active"] is True
        secret = await meta(client)
        assert secret["status"] == "ok" and secret["next_refresh_at"] is not None
        # Who consented: the verified ID token's subject (DOT sends no email claim), and who
        # made the link.
        assert str(secret["connected_by"]).endswith(" (via user:owner@example.com)")
        assert set(secret["scopes"]) >= {"openid", "read"}  # type: ignore[arg-type]
        runs = (await client.get("/v1/runs", params={"secret": "DOT_TOKEN"})).json()
        assert [(r["trigger"], r["status"]) for r in runs] == [("connect", "succeeded")]
        await asyncio.sleep(0)
        assert any(isinstance(e, SecretConnected) and e.secret == "DOT_TOKEN" for e in events)
        # 20 refreshes, each rotating: no refresh token is ever presented twice.
        dot.server.reset_log()
        seen = {value["value"]}
        for _ in range(20):
            refreshed = await client.get("/refresh/DOT_TOKEN")
            assert refreshed.status_code == 200, refreshed.text
            current = (await client.get("/v1/secrets/DOT_TOKEN/value")).json()["value"]
            assert current not in seen
            seen.add(current)
        presented = dot.server.refresh_tokens_presented()
        assert len(presented) == 20 and len(set(presented)) == 20
        assert dot.server.introspect(current)["active"] is True

    async def test_return_to_an_allowed_origin_is_a_303(
        self, client: httpx.AsyncClient, browser: httpx.AsyncClient, dot: Dot
    ) -> None:
        url = await link(client, return_to=f"{RETURN_ORIGIN}/done?x=1")
        answer = await browser.get(await consent(dot, await to_provider(browser, url)))
        assert answer.status_code == 303
        assert answer.headers["location"] == f"{RETURN_ORIGIN}/done?x=1"

    async def test_return_to_elsewhere_is_refused_when_the_link_is_made(
        self, client: httpx.AsyncClient, dot: Dot
    ) -> None:
        response = await client.post(
            "/v1/secrets/DOT_TOKEN/connect-links", json={"return_to": "https://evil.example"}
        )
        assert response.status_code == 422
        assert "TOKENFARM_CONNECT_RETURN_ORIGINS" in response.json()["error"]["message"]

    async def test_a_link_works_once(
        self, client: httpx.AsyncClient, browser: httpx.AsyncClient, dot: Dot
    ) -> None:
        url = await link(client)
        await to_provider(browser, url)
        again = await browser.get(url)
        assert again.status_code == 400
        assert "already used" in again.text or "not valid" in again.text

    async def test_a_link_that_cannot_start_stays_unused(
        self, client: httpx.AsyncClient, browser: httpx.AsyncClient, app: FastAPI, dot: Dot
    ) -> None:
        url = await link(client)
        settings = app.state.settings
        app.state.settings = settings.model_copy(update={"public_url": None})
        refused = await browser.get(url)
        assert refused.status_code == 409
        assert "TOKENFARM_PUBLIC_URL" in refused.text and "still works" in refused.text
        app.state.settings = settings
        assert (await browser.get(url)).status_code == 302


class TestRefusedCallbacks:
    """Each answers a 400 page, stores nothing, leaves the status alone; forged ones call
    nothing at the provider."""

    async def test_replayed_callback(
        self, client: httpx.AsyncClient, browser: httpx.AsyncClient, dot: Dot
    ) -> None:
        first, callback = await connect(client, browser, dot)
        assert first.status_code == 200
        before, calls = await meta(client), token_calls(dot)
        replay = await browser.get(callback)
        assert replay.status_code == 400
        assert "already used" in replay.text
        assert token_calls(dot) == calls
        assert await meta(client) == before

    async def test_forged_state(
        self, client: httpx.AsyncClient, browser: httpx.AsyncClient, dot: Dot
    ) -> None:
        before = await meta(client)
        answer = await browser.get("/connect/callback", params={"state": "forged", "code": "x"})
        assert answer.status_code == 400 and "unknown" in answer.text
        assert token_calls(dot) == 0
        assert await meta(client) == before

    async def test_expired_state(
        self, client: httpx.AsyncClient, browser: httpx.AsyncClient, app: FastAPI, dot: Dot
    ) -> None:
        callback = await consent(dot, await to_provider(browser, await link(client)))
        async with app.state.session_factory() as session, session.begin():
            await session.execute(
                update(ConnectState).values(expires_at=utcnow() - timedelta(seconds=1))
            )
        answer = await browser.get(callback)
        assert answer.status_code == 400 and "expired" in answer.text
        assert token_calls(dot) == 0
        assert (await meta(client))["has_value"] is False

    async def test_another_browser(
        self, client: httpx.AsyncClient, app: FastAPI, browser: httpx.AsyncClient, dot: Dot
    ) -> None:
        callback = await consent(dot, await to_provider(browser, await link(client)))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as other:
            answer = await other.get(callback)
        assert answer.status_code == 400 and "another browser" in answer.text
        assert token_calls(dot) == 0
        # Burnt: not even the right browser may use it now.
        assert (await browser.get(callback)).status_code == 400
        assert (await meta(client))["has_value"] is False

    async def test_access_denied(
        self, client: httpx.AsyncClient, browser: httpx.AsyncClient, dot: Dot
    ) -> None:
        callback = await consent(dot, await to_provider(browser, await link(client)), allow=False)
        answer = await browser.get(callback)
        assert answer.status_code == 400 and "access_denied" in answer.text
        assert token_calls(dot) == 0
        assert (await meta(client))["has_value"] is False
        runs = (await client.get("/v1/runs", params={"secret": "DOT_TOKEN"})).json()
        assert [(r["trigger"], r["status"]) for r in runs] == [("connect", "failed")]

    async def test_wrong_pkce_verifier(
        self, client: httpx.AsyncClient, browser: httpx.AsyncClient, app: FastAPI, dot: Dot
    ) -> None:
        callback = await consent(dot, await to_provider(browser, await link(client)))
        tampered = app.state.keyring.encrypt("x" * 64)
        async with app.state.session_factory() as session, session.begin():
            await session.execute(update(ConnectState).values(verifier=tampered))
        answer = await browser.get(callback)
        assert answer.status_code == 400, answer.text
        assert "invalid_grant" in answer.text
        assert (await meta(client))["has_value"] is False

    async def test_an_id_token_that_fails_verification_stores_nothing(
        self, client: httpx.AsyncClient, browser: httpx.AsyncClient, app: FastAPI, dot: Dot
    ) -> None:
        async with app.state.session_factory() as session, session.begin():
            await session.execute(
                update(Provider).values(issuer="https://someone-else.example.com")
            )
        answer, _ = await connect(client, browser, dot)
        assert answer.status_code == 502, answer.text
        assert "ID token failed verification" in answer.text
        assert (await meta(client))["has_value"] is False

    async def test_provider_text_is_escaped_and_capped(
        self, client: httpx.AsyncClient, browser: httpx.AsyncClient, dot: Dot
    ) -> None:
        authorize = await to_provider(browser, await link(client))
        state = parse_qs(urlsplit(authorize).query)["state"][0]
        evil = "<script>alert(1)</script>" + "A" * 5000
        answer = await browser.get(
            "/connect/callback",
            params={"state": state, "error": "access_denied", "error_description": evil},
        )
        assert answer.status_code == 400
        assert "<script>" not in answer.text and "&lt;script&gt;" in answer.text
        assert "A" * 300 not in answer.text


class TestReconnect:
    async def test_after_the_grant_is_revoked_at_the_provider(
        self, client: httpx.AsyncClient, browser: httpx.AsyncClient, dot: Dot
    ) -> None:
        first, _ = await connect(client, browser, dot)
        assert first.status_code == 200
        dot.server.revoke_all_for()
        refused = await client.get("/refresh/DOT_TOKEN")
        assert refused.status_code in (409, 502), refused.text
        secret = await meta(client)
        assert secret["status"] == "needs_reauth"
        assert secret["reconnect"] == "POST /v1/secrets/DOT_TOKEN/connect-links"
        again, _ = await connect(client, browser, dot)
        assert again.status_code == 200, again.text
        secret = await meta(client)
        assert secret["status"] == "ok" and secret["reconnect"] is None
        assert (await client.get("/refresh/DOT_TOKEN")).status_code == 200


class TestSecrecy:
    async def test_no_code_state_verifier_or_token_in_logs_or_answers(
        self,
        client: httpx.AsyncClient,
        browser: httpx.AsyncClient,
        app: FastAPI,
        dot: Dot,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.DEBUG)
        authorize = await to_provider(browser, await link(client))
        state = parse_qs(urlsplit(authorize).query)["state"][0]
        callback = await consent(dot, authorize)
        code = parse_qs(urlsplit(callback).query)["code"][0]
        async with app.state.session_factory() as session:
            stored = (await session.execute(select(ConnectState))).scalar_one()
        assert stored.verifier is not None and state not in str(stored.state_hash)
        verifier = app.state.keyring.decrypt(stored.verifier)
        answers = [await browser.get(callback), await browser.get(callback)]
        async with app.state.session_factory() as session:
            refresh = await refresh_token_of(
                session, app.state.keyring, app.state.settings, "DOT_TOKEN"
            )
        assert refresh is not None
        assert sha256_hex(refresh)  # a real token
        runs = (await client.get("/v1/runs", params={"secret": "DOT_TOKEN"})).json()
        details = [(await client.get(f"/v1/runs/{run['id']}")).text for run in runs]
        listed = (await client.get("/v1/secrets")).text
        versions = (await client.get("/v1/secrets/DOT_TOKEN/versions")).text
        texts = [caplog.text, *(a.text for a in answers), *details, listed, versions]
        texts += [str(dict(a.headers)) for a in answers]
        for canary in (state, code, refresh, verifier):
            for text in texts:
                assert canary not in text


class TestAccess:
    async def test_public_url_not_set(
        self, client: httpx.AsyncClient, app: FastAPI, dot: Dot
    ) -> None:
        app.state.settings = app.state.settings.model_copy(update={"public_url": None})
        response = await client.post("/v1/secrets/DOT_TOKEN/connect-links")
        assert response.status_code == 409
        error = response.json()["error"]
        assert error["type"] == "public_url_not_set"
        assert "TOKENFARM_PUBLIC_URL" in error["message"]

    async def test_anonymous_gets_nothing_new(
        self, anonymous_client: httpx.AsyncClient, dot: Dot
    ) -> None:
        for method, path in [
            ("POST", "/v1/secrets/DOT_TOKEN/connect-links"),
            ("GET", "/connect/DOT_TOKEN"),
            ("GET", "/v1/secrets/DOT_TOKEN"),
            ("GET", "/v1/secrets/DOT_TOKEN/value"),
            ("GET", "/v1/secrets/DOT_TOKEN__refresh_token/value"),
        ]:
            response = await anonymous_client.request(method, path)
            assert response.status_code == 401, (path, response.text)
        assert token_calls(dot) == 0

    async def test_connect_route_for_a_caller_with_the_permission(
        self, client: httpx.AsyncClient, dot: Dot
    ) -> None:
        response = await client.get("/connect/DOT_TOKEN")
        assert response.status_code == 302
        assert response.headers["location"].startswith(dot.server.authorization_url)
        cookie = response.headers["set-cookie"].lower()
        assert "httponly" in cookie and "path=/connect/callback" in cookie


class TestDiscoveredProvider:
    async def test_a_provider_given_only_its_issuer_connects(
        self,
        client: httpx.AsyncClient,
        app: FastAPI,
        browser: httpx.AsyncClient,
        oauth_server: OAuthServer,
    ) -> None:
        """Endpoints from the issuer's discovery document (fetched through the egress guard)
        serve creation (the refresher's token URL), the authorization redirect and the code
        exchange."""
        discovery_cache.forget(oauth_server.issuer)
        client_id, client_secret = oauth_server.create_client(redirect_uris=[CALLBACK_URL])
        assert client_secret is not None
        await create_secret(client, "ISS_CLIENT_ID", client_id, environment_specific=False)
        await create_secret(client, "ISS_CLIENT_SECRET", client_secret, environment_specific=False)
        body = {
            "name": "by-issuer",
            "issuer": oauth_server.issuer,
            "client_auth": "basic",
            "client_id_secret": "ISS_CLIENT_ID",
            "client_secret_secret": "ISS_CLIENT_SECRET",
            "scopes": ["openid", "email", "read"],
        }
        response = await client.post("/v1/providers", json=body)
        assert response.status_code == 201, response.text
        created = await client.post("/v1/secrets", json={"name": "ISS", "provider": "by-issuer"})
        assert created.status_code == 201, created.text
        service = (await client.get("/v1/services/refreshers")).json()
        action = next(e for e in service["endpoints"] if e["readable_id"] == "ISS")["action"]
        assert oauth_server.token_url in str(action)
        location = await to_provider(browser, await link(client, "ISS"))
        assert location.startswith(oauth_server.authorization_url)
        callback = await asyncio.to_thread(oauth_server.consent, location)
        answer = await browser.get(callback)
        assert answer.status_code == 200, answer.text
        assert (await meta(client, "ISS"))["has_value"] is True
