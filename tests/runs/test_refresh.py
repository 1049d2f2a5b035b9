"""The canonical refresh end to end, through the real HTTP API, against a real token server."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapi import FastAPI, Request

from app.auth.actor import Actor
from app.auth.dependencies import current_actor
from tests.conftest import TokenServer, canonical_action, create_secret, secret_value, setup_oauth


class TestCanonicalRefresh:
    async def test_rotates_both_secrets_five_times_without_invalid_grant(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        setup = await setup_oauth(client, token_server)
        seen_refresh = {setup.refresh_token}
        for round_number in range(1, 6):
            response = await client.get("/refresh/ACCESS_TOKEN")
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["status"] == "succeeded"
            assert body["secret"] == "ACCESS_TOKEN"
            assert body["version"] == round_number
            assert body["expires_at"] is not None
            access = await secret_value(client, "ACCESS_TOKEN")
            refresh = await secret_value(client, "REFRESH_TOKEN")
            assert token_server.state.is_active(access)
            assert refresh not in seen_refresh
            seen_refresh.add(refresh)
        assert token_server.state.token_requests == 5
        errors = [r for r in token_server.state.requests if r.get("error")]
        assert errors == []


class TestEditedAction:
    async def test_a_run_uses_the_action_as_it_is_now(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        # Runs keep parsed actions by their text: an edit must reach the very next run.
        await setup_oauth(client, token_server)
        assert (await client.get("/refresh/ACCESS_TOKEN")).json()["status"] == "succeeded"

        async def put_action(action: list[dict[str, Any]]) -> None:
            endpoint = {"readable_id": "refresh-token", "name": "Refresh", "action": action}
            response = await client.put(
                "/v1/services/oauth", json={"name": "OAuth", "endpoints": [endpoint]}
            )
            assert response.status_code == 200, response.text

        elsewhere = canonical_action(f"{token_server.url}/no-such-token-endpoint")
        await put_action(elsewhere)
        failed = await client.get("/refresh/ACCESS_TOKEN")
        assert failed.status_code == 502, failed.text
        assert failed.json()["error"]["upstream_status"] == 404
        assert token_server.state.token_requests == 1

        await put_action(canonical_action(token_server.token_url))
        again = await client.get("/refresh/ACCESS_TOKEN")
        assert again.status_code == 200, again.text
        assert again.json()["version"] == 2
        assert token_server.state.token_requests == 2


class TestSingleFlight:
    async def test_concurrent_refreshes_share_one_run(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await setup_oauth(client, token_server)
        token_server.state.latency_seconds = 0.3

        first, second = await asyncio.gather(
            client.get("/refresh/ACCESS_TOKEN"), client.get("/refresh/ACCESS_TOKEN")
        )

        assert first.status_code == second.status_code == 200, (first.text, second.text)
        assert first.json()["version"] == second.json()["version"] == 1
        assert first.json()["run_id"] == second.json()["run_id"]
        assert sorted([first.json()["coalesced"], second.json()["coalesced"]]) == [False, True]
        assert [r.get("error") for r in token_server.state.requests] == [None]
        assert token_server.state.is_active(await secret_value(client, "REFRESH_TOKEN"))
        assert token_server.state.is_active(await secret_value(client, "ACCESS_TOKEN"))


class TestDocumentation:
    async def test_openapi_documents_the_run_routes_answers(
        self, client: httpx.AsyncClient
    ) -> None:
        schema = (await client.get("/openapi.json")).json()
        paths = schema["paths"]

        def answer(path: str, method: str, status: str = "200") -> dict[str, Any]:
            response = paths[path][method]["responses"][status]
            documented: dict[str, Any] = response["content"]["application/json"]["schema"]
            return documented

        def ref(name: str) -> dict[str, str]:
            return {"$ref": f"#/components/schemas/{name}"}

        assert answer("/refresh/{secret}", "get") == ref("RefreshResult")
        for method in ("get", "post", "put"):
            assert answer("/api/services/{slug}/{readable_id}", method) == ref("RunResult")
        assert answer("/v1/runs", "get")["items"] == ref("RunSummary")
        assert answer("/v1/runs/{run_id}", "get") == ref("RunDetail")
        for status in ("404", "409", "502", "504"):
            assert answer("/refresh/{secret}", "get", status) == ref("ErrorResponse")
        refresh = schema["components"]["schemas"]["RefreshResult"]
        expires_at = refresh["properties"]["expires_at"]["anyOf"][0]
        assert expires_at == {"type": "string", "format": "date-time"}
        assert refresh["examples"][0]["expires_at"].endswith("Z")
        for path in ("/refresh/{secret}", "/v1/runs", "/v1/runs/{run_id}"):
            assert paths[path]["get"]["description"]

    async def test_docs_page_is_served(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/docs")

        assert response.status_code == 200
        assert "swagger" in response.text.lower()


class TestRefreshBeforeRouting:
    """A caller the actor cache knows is served by the fast path beside the route
    (app/runs/router.py:refresh_secret_fast) without FastAPI's routing:
    the same checks and answers as the route, which still answers every error before a run."""

    @staticmethod
    def count_route_callers(app: FastAPI) -> list[int]:
        """How often a route resolved its caller (the fast path doesn't)."""
        resolved: list[int] = []

        async def counted(request: Request) -> Actor:
            resolved.append(1)
            return await current_actor(request)

        app.dependency_overrides[current_actor] = counted
        return resolved

    async def test_a_known_callers_refresh_skips_the_route_and_answers_the_same(
        self, app: FastAPI, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await setup_oauth(client, token_server)
        resolved = self.count_route_callers(app)
        await client.get("/v1/secrets")  # the owner's credential is in the actor cache now
        assert len(resolved) == 1

        first = await client.get("/refresh/ACCESS_TOKEN")
        second = await client.get("/refresh/ACCESS_TOKEN")
        forced = await client.get("/refresh/ACCESS_TOKEN?force=true")  # a query: the route

        assert len(resolved) == 2
        for number, response in enumerate((first, second, forced), start=1):
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["status"] == "succeeded" and body["version"] == number
            assert set(body) == {
                "run_id", "status", "error", "response", "coalesced", "adopted",
                "secret", "version", "expires_at",
            }  # fmt: skip
            assert response.headers["x-request-id"]
        assert token_server.state.token_requests == 3
        assert token_server.state.is_active(await secret_value(client, "ACCESS_TOKEN"))

    async def test_errors_before_the_run_are_the_routes(
        self, app: FastAPI, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await setup_oauth(client, token_server)
        await create_secret(client, "UNBOUND", "x")
        await client.get("/v1/secrets")
        resolved = self.count_route_callers(app)

        missing = await client.get("/refresh/NO_SUCH_SECRET")
        unbound = await client.get("/refresh/UNBOUND")

        assert missing.status_code == 404, missing.text
        assert missing.json()["error"]["type"] == "not_found"
        assert unbound.status_code == 409, unbound.text
        assert "has no refresh_endpoint" in unbound.json()["error"]["message"]
        assert len(resolved) == 2  # both answered by the route
        assert token_server.state.token_requests == 0

    async def test_a_failed_run_answers_as_the_route_does(
        self, app: FastAPI, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await setup_oauth(client, token_server)
        await client.get("/v1/secrets")
        resolved = self.count_route_callers(app)
        token_server.state.queue_faults("invalid_grant")

        failed = await client.get("/refresh/ACCESS_TOKEN")
        stopped = await client.get("/refresh/ACCESS_TOKEN")

        assert resolved == []
        assert failed.status_code == 502, failed.text
        body = failed.json()
        assert body["status"] == "failed" and body["run_id"]
        assert body["error"]["oauth_error"] == "invalid_grant"
        assert stopped.status_code == 409, stopped.text
        assert stopped.json()["error"]["type"] == "needs_reauth"
        assert token_server.state.token_requests == 1
