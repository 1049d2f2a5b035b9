"""Refresh on read: `GET /v1/secrets/{name}/value?min_valid_seconds=N` refreshes a value that
would expire within N seconds first, through the real token server, as `refresh_as` or the caller.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.auth.conftest import Callers, assert_refused, error_of
from tests.auth.conftest import callers as callers  # the fixture, for this module
from tests.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    OAuthSetup,
    TokenServer,
    create_secret,
    secret_value,
    setup_oauth,
)

VALUE = "/v1/secrets/ACCESS_TOKEN/value"
LIFETIME = 3600  # the token server's expires_in
REFRESHER_PERMISSIONS = (
    "services.run:oauth",
    "secrets.update_from_service:ACCESS_TOKEN",
    "secrets.update_from_service:REFRESH_TOKEN",
)


async def refreshed_once(client: httpx.AsyncClient, server: TokenServer) -> dict[str, Any]:
    """The canonical refresh, run once: ACCESS_TOKEN v1 expires in an hour. Answers its read."""
    await setup_oauth(client, server)
    response = await client.get("/refresh/ACCESS_TOKEN")
    assert response.status_code == 200, response.text
    server.state.reset_counters()
    read = await client.get(VALUE)
    assert read.status_code == 200, read.text
    body: dict[str, Any] = read.json()
    assert body["version"] == 1 and body["expires_at"] is not None
    return body


async def read_fresh(client: httpx.AsyncClient, min_valid_seconds: Any) -> httpx.Response:
    """A value read that asks for `min_valid_seconds` of validity."""
    return await client.get(VALUE, params={"min_valid_seconds": min_valid_seconds})


def expires_in(body: dict[str, Any]) -> float:
    """Seconds until a read value expires."""
    return (datetime.fromisoformat(body["expires_at"]) - datetime.now(UTC)).total_seconds()


class TestWhenToRefresh:
    async def test_a_value_expiring_sooner_is_refreshed_first(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        before = await refreshed_once(client, token_server)
        await asyncio.sleep(0.01)  # the new expiry must be later than the old one

        response = await read_fresh(client, LIFETIME + 100)

        assert response.status_code == 200, response.text
        body = response.json()
        assert body["version"] == 2
        assert body["value"] != before["value"]
        assert token_server.state.is_active(body["value"])
        assert body["expires_at"] > before["expires_at"]
        assert token_server.state.token_requests == 1
        runs = (await client.get("/v1/runs", params={"trigger": "read"})).json()
        assert [(run["status"], run["actor"]) for run in runs] == [
            ("succeeded", "user:owner@example.com")
        ]

    async def test_a_value_valid_long_enough_is_answered_as_it_is(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        before = await refreshed_once(client, token_server)

        response = await read_fresh(client, 60)

        assert response.status_code == 200, response.text
        assert response.json() == before
        assert token_server.state.token_requests == 0

    async def test_an_expired_value_is_refreshed_even_at_zero(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await setup_oauth(client, token_server)
        past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        written = await client.put(VALUE, json={"value": "stale", "expires_at": past})
        assert written.status_code == 200, written.text

        response = await read_fresh(client, 0)

        assert response.status_code == 200, response.text
        assert response.json()["version"] == 2
        assert LIFETIME - 60 < expires_in(response.json()) <= LIFETIME
        assert token_server.state.token_requests == 1

    async def test_a_value_without_expiry_is_never_refreshed(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await setup_oauth(client, token_server)
        assert (await client.put(VALUE, json={"value": "forever"})).status_code == 200

        response = await read_fresh(client, 86400)

        assert response.status_code == 200, response.text
        assert (response.json()["value"], response.json()["version"]) == ("forever", 1)
        assert token_server.state.token_requests == 0

    async def test_a_read_without_the_parameter_never_refreshes(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await setup_oauth(client, token_server)
        past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        assert (await client.put(VALUE, json={"value": "stale", "expires_at": past})).is_success

        response = await client.get(VALUE)

        assert response.status_code == 200, response.text
        assert response.json()["value"] == "stale"
        assert token_server.state.token_requests == 0

    async def test_concurrent_reads_share_one_refresh(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await refreshed_once(client, token_server)
        token_server.state.latency_seconds = 0.3

        responses = await asyncio.gather(*(read_fresh(client, LIFETIME + 100) for _ in range(10)))

        assert [r.status_code for r in responses] == [200] * 10, [r.text for r in responses]
        assert {(r.json()["version"], r.json()["value"]) for r in responses} == {
            (2, await secret_value(client, "ACCESS_TOKEN"))
        }
        assert token_server.state.token_requests == 1
        assert [r["error"] for r in token_server.state.requests] == [None]
        assert token_server.state.is_active(await secret_value(client, "REFRESH_TOKEN"))


class TestWhoRefreshes:
    async def test_a_reader_gets_a_fresh_value_through_refresh_as(
        self, client: httpx.AsyncClient, token_server: TokenServer, callers: Callers
    ) -> None:
        await refreshed_once(client, token_server)
        await callers.account(*REFRESHER_PERMISSIONS, name="refresher")
        patched = await client.patch("/v1/secrets/ACCESS_TOKEN", json={"refresh_as": "refresher"})
        assert patched.status_code == 200, patched.text
        reader = await callers.holding("secrets.read:ACCESS_TOKEN")

        response = await read_fresh(reader, LIFETIME + 100)

        assert response.status_code == 200, response.text
        assert response.json()["version"] == 2
        assert token_server.state.is_active(response.json()["value"])
        assert token_server.state.token_requests == 1
        runs = (await client.get("/v1/runs", params={"trigger": "read"})).json()
        assert [run["actor"] for run in runs] == ["service_account:refresher"]

    async def test_without_refresh_as_the_reader_needs_to_run_the_endpoint(
        self, client: httpx.AsyncClient, token_server: TokenServer, callers: Callers
    ) -> None:
        await refreshed_once(client, token_server)
        reader = await callers.holding("secrets.read:ACCESS_TOKEN")

        response = await read_fresh(reader, LIFETIME + 100)

        assert_refused(response, "services.run:oauth")
        assert "services.run:oauth/refresh-token" in response.json()["error"]["message"]
        assert token_server.state.token_requests == 0
        # The value itself stays readable without the refresh.
        assert (await reader.get(VALUE)).json()["version"] == 1

    async def test_a_refresh_as_account_without_run_rights_is_named(
        self, client: httpx.AsyncClient, token_server: TokenServer, callers: Callers
    ) -> None:
        await refreshed_once(client, token_server)
        await callers.account("secrets.update_from_service:*", name="weak")
        assert (
            await client.patch("/v1/secrets/ACCESS_TOKEN", json={"refresh_as": "weak"})
        ).is_success
        reader = await callers.holding("secrets.read:ACCESS_TOKEN")

        response = await read_fresh(reader, LIFETIME + 100)

        assert_refused(response, "services.run:oauth")
        assert "'weak'" in response.json()["error"]["message"]
        assert token_server.state.token_requests == 0

    async def test_a_refresh_as_account_that_may_not_write_fails_the_run(
        self, client: httpx.AsyncClient, token_server: TokenServer, callers: Callers
    ) -> None:
        await refreshed_once(client, token_server)
        await callers.account("services.run:oauth", name="runner-only")
        assert (
            await client.patch("/v1/secrets/ACCESS_TOKEN", json={"refresh_as": "runner-only"})
        ).is_success
        reader = await callers.holding("secrets.read:ACCESS_TOKEN")

        response = await read_fresh(reader, LIFETIME + 100)

        assert_refused(response, "secrets.update_from_service:ACCESS_TOKEN")
        assert response.json()["run_id"]
        assert token_server.state.token_requests == 0

    async def test_the_read_permission_is_checked_first(
        self, client: httpx.AsyncClient, token_server: TokenServer, callers: Callers
    ) -> None:
        await refreshed_once(client, token_server)
        runner = await callers.holding("services.run:oauth", "secrets.read:OTHER")

        response = await read_fresh(runner, LIFETIME + 100)

        assert_refused(response, "secrets.read:ACCESS_TOKEN")
        assert token_server.state.token_requests == 0


class TestWhenItCantBeRefreshed:
    async def test_a_failed_refresh_answers_the_run_and_keeps_the_value(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        before = await refreshed_once(client, token_server)
        refresh_token = await secret_value(client, "REFRESH_TOKEN")
        token_server.state.fault = "invalid_client"

        response = await read_fresh(client, LIFETIME + 100)

        error = error_of(response, 502)
        assert error["type"] == "upstream_error"
        assert error["oauth_error"] == "invalid_client"
        body = response.json()
        assert body["status"] == "failed"
        run = await client.get(f"/v1/runs/{body['run_id']}")
        assert run.status_code == 200, run.text
        assert run.json()["trigger"] == "read"
        for canary in (CLIENT_ID, CLIENT_SECRET, refresh_token, before["value"]):
            assert canary not in response.text
        assert "value" not in body
        token_server.state.fault = None
        assert (await client.get(VALUE)).json() == before
        assert (await client.get("/v1/secrets/ACCESS_TOKEN")).json()["status"] == "failing"

    async def test_a_secret_without_refresh_endpoint_answers_409(
        self, client: httpx.AsyncClient
    ) -> None:
        soon = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
        await create_secret(client, "API_TOKEN", "short-lived", expires_at=soon)

        response = await client.get(
            "/v1/secrets/API_TOKEN/value", params={"min_valid_seconds": 600}
        )

        error = error_of(response, 409)
        assert "expires within 600 s" in error["message"]
        assert "no refresh_endpoint" in error["message"]
        assert "PATCH /v1/secrets/API_TOKEN" in error["message"]
        assert "short-lived" not in response.text
        # Asking for less than it has left is fine.
        fine = await client.get("/v1/secrets/API_TOKEN/value", params={"min_valid_seconds": 60})
        assert fine.status_code == 200, fine.text

    async def test_another_environments_value_is_not_refreshed_here(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        setup: OAuthSetup = await setup_oauth(client, token_server)
        soon = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
        written = await client.put(
            VALUE, json={"value": "prod", "environment": "production", "expires_at": soon}
        )
        assert written.status_code == 200, written.text

        response = await client.get(
            VALUE, params={"environment": "production", "min_valid_seconds": 600}
        )

        assert "'production'" in error_of(response, 409)["message"]
        assert token_server.state.token_requests == 0
        assert await secret_value(client, "REFRESH_TOKEN") == setup.refresh_token

    @pytest.mark.parametrize("bad", ["-1", "86401", "soon", "1.5", ""])
    async def test_a_bad_min_valid_seconds_is_refused(
        self, client: httpx.AsyncClient, token_server: TokenServer, bad: str
    ) -> None:
        await refreshed_once(client, token_server)

        response = await client.get(f"{VALUE}?min_valid_seconds={bad}")

        error = error_of(response, 422)
        assert error["errors"][0]["path"] == "min_valid_seconds"
        assert token_server.state.token_requests == 0


class TestDocumentation:
    async def test_openapi_documents_the_parameter_and_the_new_fields(
        self, client: httpx.AsyncClient
    ) -> None:
        schema = (await client.get("/openapi.json")).json()
        read = schema["paths"]["/v1/secrets/{name}/value"]["get"]
        parameter = next(p for p in read["parameters"] if p["name"] == "min_valid_seconds")
        assert parameter["description"]
        assert {"403", "409", "502", "504"} <= set(read["responses"])
        components = schema["components"]["schemas"]
        for model, fields in {
            "SecretRead": ("refresh_as", "refresh_before_expiry_seconds", "next_refresh_at"),
            "SecretUpdate": ("refresh_as", "refresh_before_expiry_seconds"),
            "SecretCreate": ("refresh_as", "refresh_before_expiry_seconds"),
        }.items():
            for field in fields:
                assert components[model]["properties"][field].get("description"), (model, field)
