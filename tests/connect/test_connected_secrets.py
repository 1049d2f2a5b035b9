"""Connected secrets: creation binds a refresher and expiry-driven refresh; the refresh token's
hidden companion is out of every route's reach; storing and clearing a connection."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlmodel import col

from app.auth.accounts import AccountStore
from app.configuration.export import export_document
from app.connect.tokens import TokenSet, clear_connection, refresh_token_of, store_connection
from app.secrets.models import Secret
from tests.conftest import CLIENT_ID, CLIENT_SECRET, TokenServer, create_secret
from tests.connect.helpers import add_provider, connected_secret

COMPANION = "ACME_TOKEN__refresh_token"


async def connect_with(app: FastAPI, tokens: TokenSet, name: str = "ACME_TOKEN") -> None:
    """Store a connection as the connect flow does, in one transaction."""
    state = app.state
    async with state.session_factory() as session, session.begin():
        await store_connection(
            session,
            state.keyring,
            state.settings,
            name,
            tokens,
            how="authorization_code",
            actor="user:alice@example.com",
        )


class TestCreate:
    async def test_binds_refresher_and_expiry_refresh(
        self, client: httpx.AsyncClient, app: FastAPI, token_server: TokenServer
    ) -> None:
        body = await connected_secret(
            client,
            app,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            token_url=token_server.token_url,
        )
        assert body["provider"] == "acme"
        assert body["refresh_endpoint"] == "refreshers/ACME_TOKEN"
        assert body["refresh_as"] == "connect-refresher"
        assert body["has_value"] is False
        assert body["reconnect"] == "POST /v1/secrets/ACME_TOKEN/connect-links"
        service = (await client.get("/v1/services/refreshers")).json()
        action = service["endpoints"][0]["action"]
        assert action[1]["url"] == token_server.token_url
        assert "{{ secrets.ACME_TOKEN__refresh_token }}" in str(action)
        # The companion is hidden from the list.
        names = [s["name"] for s in (await client.get("/v1/secrets")).json()]
        assert "ACME_TOKEN" in names and COMPANION not in names

    async def test_unknown_provider_is_422_naming_it(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/v1/secrets", json={"name": "X", "provider": "nope"})
        assert response.status_code == 422
        assert response.json()["error"]["path"] == "provider"
        assert "nope" in response.json()["error"]["message"]
        assert (await client.get("/v1/secrets/X")).status_code == 404

    async def test_provider_without_token_url_is_422(
        self, client: httpx.AsyncClient, app: FastAPI
    ) -> None:
        await add_provider(app, "bare", authorization_url="https://a.example.com/authorize")
        response = await client.post("/v1/secrets", json={"name": "X", "provider": "bare"})
        assert response.status_code == 422
        assert "token_url" in response.json()["error"]["message"]
        # Nothing half-written: neither the secret nor its companion.
        assert (await client.get("/v1/secrets/X")).status_code == 404
        assert (await client.get("/v1/secrets/X__refresh_token")).status_code == 404

    async def test_value_is_refused(self, client: httpx.AsyncClient, app: FastAPI) -> None:
        await add_provider(
            app,
            "p",
            token_url="https://a.example.com/token",
            authorization_url="https://a.example.com/authorize",
        )
        response = await client.post(
            "/v1/secrets", json={"name": "X", "provider": "p", "value": "tok"}
        )
        assert response.status_code == 422
        assert response.json()["error"]["path"] == "value"

    async def test_companion_name_taken_is_409(
        self, client: httpx.AsyncClient, app: FastAPI
    ) -> None:
        await add_provider(
            app,
            "p",
            token_url="https://a.example.com/token",
            authorization_url="https://a.example.com/authorize",
        )
        await create_secret(client, "X__refresh_token", "mine")
        response = await client.post("/v1/secrets", json={"name": "X", "provider": "p"})
        assert response.status_code == 409
        assert "X__refresh_token" in response.json()["error"]["message"]


class TestHiddenCompanion:
    @pytest.fixture
    async def connected(
        self, client: httpx.AsyncClient, app: FastAPI, token_server: TokenServer
    ) -> None:
        await connected_secret(
            client,
            app,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            token_url=token_server.token_url,
        )
        await connect_with(app, TokenSet("at-canary-1", "rt-canary-1", 3600, "read", None))

    @pytest.mark.usefixtures("connected")
    async def test_no_route_reaches_it(self, client: httpx.AsyncClient) -> None:
        base = f"/v1/secrets/{COMPANION}"
        answers = [
            await client.get(f"{base}/value"),
            await client.get(base),
            await client.get(f"{base}/versions"),
            await client.put(f"{base}/value", json={"value": "x"}),
            await client.patch(base, json={"description": "x"}),
            await client.delete(base),
            await client.post(f"{base}/rollback", json={"version": 1}),
            await client.post(
                f"{base}/refresher",
                json={"preset": "oauth2_refresh_token", "params": {}},
            ),
        ]
        statuses = [answer.status_code for answer in answers]
        assert statuses == [403, 409, 409, 409, 409, 409, 409, 409], [a.text for a in answers]
        for answer in answers:
            assert "rt-canary-1" not in answer.text
            assert "connected secret 'ACME_TOKEN'" in answer.json()["error"]["message"]
        # Still there, unchanged.
        assert (await client.get("/v1/secrets/ACME_TOKEN/value")).json()["value"] == "at-canary-1"

    @pytest.mark.usefixtures("connected")
    async def test_not_exported(self, app: FastAPI) -> None:
        async with app.state.session_factory() as session:
            document = await export_document(session, app.state.settings)
        names = [secret["name"] for secret in document["secrets"]]
        assert "ACME_TOKEN" in names and COMPANION not in names
        assert "rt-canary-1" not in str(document)

    @pytest.mark.usefixtures("connected")
    async def test_goes_with_its_connected_secret(
        self, client: httpx.AsyncClient, app: FastAPI
    ) -> None:
        assert (await client.delete("/v1/secrets/ACME_TOKEN")).status_code == 204
        async with app.state.session_factory() as session:
            names = set((await session.execute(select(col(Secret.name)))).scalars())
        assert "ACME_TOKEN" not in names and COMPANION not in names


class TestStoreConnection:
    async def test_stores_tokens_and_refreshes_as_connect_refresher(
        self, client: httpx.AsyncClient, app: FastAPI, token_server: TokenServer
    ) -> None:
        await connected_secret(
            client,
            app,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            token_url=token_server.token_url,
        )
        refresh_token = token_server.state.issue_refresh_token(CLIENT_ID)
        await connect_with(
            app, TokenSet("at-first", refresh_token, 3600, "read write", {"email": "a@x.io"})
        )
        meta = (await client.get("/v1/secrets/ACME_TOKEN")).json()
        assert meta["status"] == "ok" and meta["version"] == 1
        assert meta["scopes"] == ["read", "write"]
        assert meta["connected_by"].startswith("a@x.io")
        assert meta["next_refresh_at"] is not None  # expiry-driven refresh is planned
        assert meta["reconnect"] is None
        # The scheduler's way: as the refresh_as account, trigger expiry.
        async with app.state.session_factory() as session:
            actor = await AccountStore(session).actor_for_service_account("connect-refresher")
        outcome = await app.state.runner.run_endpoint(
            "refreshers", "ACME_TOKEN", actor=actor, trigger="expiry"
        )
        assert outcome.status == "succeeded", outcome.error_body
        value = (await client.get("/v1/secrets/ACME_TOKEN/value")).json()
        assert value["version"] == 2 and value["value"] != "at-first"
        assert token_server.state.is_active(value["value"])
        state = app.state
        async with state.session_factory() as session:
            rotated = await refresh_token_of(session, state.keyring, state.settings, "ACME_TOKEN")
        assert rotated is not None and rotated != refresh_token

    async def test_needs_reauth_goes_back_to_ok_and_keeps_refresh_token_without_one(
        self, client: httpx.AsyncClient, app: FastAPI, token_server: TokenServer
    ) -> None:
        await connected_secret(
            client,
            app,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            token_url=token_server.token_url,
        )
        await connect_with(app, TokenSet("at-1", "rt-1", 60, None, None))
        async with app.state.session_factory() as session, session.begin():
            secret = (
                await session.execute(select(Secret).where(col(Secret.name) == "ACME_TOKEN"))
            ).scalar_one()
            secret.status = "needs_reauth"
        meta = (await client.get("/v1/secrets/ACME_TOKEN")).json()
        assert meta["reconnect"] == "POST /v1/secrets/ACME_TOKEN/connect-links"
        await connect_with(app, TokenSet("at-2", None, 60, None, None))
        meta = (await client.get("/v1/secrets/ACME_TOKEN")).json()
        assert meta["status"] == "ok" and meta["version"] == 2
        state = app.state
        async with state.session_factory() as session:
            kept = await refresh_token_of(session, state.keyring, state.settings, "ACME_TOKEN")
        assert kept == "rt-1"

    async def test_clear_connection_then_connect_again(
        self, client: httpx.AsyncClient, app: FastAPI, token_server: TokenServer
    ) -> None:
        await connected_secret(
            client,
            app,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            token_url=token_server.token_url,
        )
        await connect_with(app, TokenSet("at-1", "rt-1", 60, None, None))
        state = app.state
        async with state.session_factory() as session, session.begin():
            await clear_connection(
                session, state.keyring, state.settings, "ACME_TOKEN", actor="user:bob"
            )
        assert (await client.get("/v1/secrets/ACME_TOKEN/value")).status_code == 404
        meta = (await client.get("/v1/secrets/ACME_TOKEN")).json()
        assert meta["has_value"] is False and meta["next_refresh_at"] is None
        assert meta["connected_by"] is None
        versions = (await client.get("/v1/secrets/ACME_TOKEN/versions")).json()
        assert [v["source"] for v in versions] == ["disconnect", "connect"]
        async with state.session_factory() as session:
            assert (
                await refresh_token_of(session, state.keyring, state.settings, "ACME_TOKEN") is None
            )
        await connect_with(app, TokenSet("at-3", "rt-3", 60, None, None))
        value = (await client.get("/v1/secrets/ACME_TOKEN/value")).json()
        assert value == {**value, "value": "at-3", "version": 3}

    async def test_ordinary_secret_is_not_connected(
        self, client: httpx.AsyncClient, app: FastAPI
    ) -> None:
        await create_secret(client, "PLAIN")
        with pytest.raises(Exception, match="not a connected secret"):
            await connect_with(app, TokenSet("a", "r", None, None, None), name="PLAIN")
        assert (await client.get("/v1/secrets/PLAIN")).json()["has_value"] is False


class TestReuseGrace:
    @pytest.mark.parametrize(("grace", "ambiguous"), [(0, "auto"), (30, "retry")])
    async def test_only_a_provider_with_a_grace_period_retries_a_lost_answer(
        self,
        client: httpx.AsyncClient,
        app: FastAPI,
        token_server: TokenServer,
        grace: int,
        ambiguous: str,
    ) -> None:
        await connected_secret(
            client,
            app,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            token_url=token_server.token_url,
            refresh_token_reuse_grace_seconds=grace,
        )
        service = (await client.get("/v1/services/refreshers")).json()
        action = service["endpoints"][0]["action"]
        request = next(node for node in action if node["type"] == "web_request")
        assert request.get("retry", {}).get("ambiguous_failures", "auto") == ambiguous
