"""Secret health: `needs_reauth` after `invalid_grant`, `failing` with a count, and lost races."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
from fastapi import FastAPI

from app.auth.actor import Actor
from app.runs.runner import Runner
from tests.conftest import CLIENT_ID, TokenServer, secret_value, setup_oauth, wait_at_gate


async def metadata(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    """A secret's metadata as the API reports it."""
    response = await client.get(f"/v1/secrets/{name}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def add_twin_endpoint(client: httpx.AsyncClient, server: TokenServer) -> None:
    """The canonical refresh, plus a second endpoint `twin` writing the same secrets."""
    await setup_oauth(client, server)
    service = (await client.get("/v1/services/oauth")).json()
    twin = {**service["endpoints"][0], "readable_id": "twin", "enable_log": True}
    service["endpoints"].append(twin)
    response = await client.put(
        "/v1/services/oauth",
        json={key: service[key] for key in ("name", "variables", "endpoints")},
    )
    assert response.status_code == 200, response.text


async def refused_grant(client: httpx.AsyncClient, server: TokenServer) -> None:
    """Set up the canonical refresh, rotate once, then have the token server refuse the grant."""
    await setup_oauth(client, server)
    assert (await client.get("/refresh/ACCESS_TOKEN")).status_code == 200
    server.state.queue_faults("invalid_grant")
    response = await client.get("/refresh/ACCESS_TOKEN")
    assert response.status_code == 502, response.text
    assert response.json()["error"]["oauth_error"] == "invalid_grant"
    server.state.reset_counters()


class TestNeedsReauth:
    async def test_invalid_grant_marks_every_target(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await refused_grant(client, token_server)

        for name in ("ACCESS_TOKEN", "REFRESH_TOKEN"):
            found = await metadata(client, name)
            assert found["status"] == "needs_reauth"
            assert found["failure_count"] == 1
            assert "invalid_grant" in found["last_error"]
        # What the run read but doesn't write is not its business.
        assert (await metadata(client, "CLIENT_SECRET"))["status"] == "ok"

    async def test_refresh_then_answers_409_without_calling_upstream(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await refused_grant(client, token_server)

        response = await client.get("/refresh/ACCESS_TOKEN")

        assert response.status_code == 409, response.text
        error = response.json()["error"]
        assert error["type"] == "needs_reauth"
        assert "PUT /v1/secrets/" in error["message"]
        assert "force=true" in error["message"]
        assert token_server.state.token_requests == 0
        # A refused call doesn't count as another failed refresh.
        assert (await metadata(client, "ACCESS_TOKEN"))["failure_count"] == 1

    async def test_force_calls_the_upstream_anyway(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await refused_grant(client, token_server)

        response = await client.get("/refresh/ACCESS_TOKEN", params={"force": "true"})

        # The grant was refused only once (a queued fault): the stored token still works.
        assert response.status_code == 200, response.text
        assert token_server.state.token_requests == 1
        for name in ("ACCESS_TOKEN", "REFRESH_TOKEN"):
            found = await metadata(client, name)
            assert (found["status"], found["failure_count"], found["last_error"]) == (
                "ok",
                0,
                None,
            )

    async def test_a_value_set_by_hand_resumes_refreshing(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await refused_grant(client, token_server)
        # The person authorizes again and stores the new refresh token.
        fresh = token_server.state.issue_refresh_token(CLIENT_ID)
        response = await client.put("/v1/secrets/REFRESH_TOKEN/value", json={"value": fresh})
        assert response.status_code == 200, response.text
        assert (await metadata(client, "ACCESS_TOKEN"))["status"] == "ok"

        response = await client.get("/refresh/ACCESS_TOKEN")

        assert response.status_code == 200, response.text
        assert token_server.state.is_active(await secret_value(client, "ACCESS_TOKEN"))
        assert token_server.state.is_active(await secret_value(client, "REFRESH_TOKEN"))

    async def test_a_value_of_an_unrelated_secret_resumes_nothing(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await refused_grant(client, token_server)
        response = await client.post("/v1/secrets", json={"name": "OTHER", "value": "x"})
        assert response.status_code == 201, response.text

        assert (await metadata(client, "ACCESS_TOKEN"))["status"] == "needs_reauth"


class TestFailing:
    async def test_repeated_failures_are_counted_and_a_success_resets(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await setup_oauth(client, token_server)
        token_server.state.fault = "invalid_client"
        for count in (1, 2, 3):
            assert (await client.get("/refresh/ACCESS_TOKEN")).status_code == 502
            found = await metadata(client, "ACCESS_TOKEN")
            assert (found["status"], found["failure_count"]) == ("failing", count)
            assert found["last_error"].startswith("upstream_error (permanent): ")
            assert "invalid_client" in found["last_error"]
        token_server.state.fault = None

        # Three failures in a row: on-demand refreshes back off (tests/runs/
        # test_refresh_backoff.py), and the owner forces one.
        assert (await client.get("/refresh/ACCESS_TOKEN")).status_code == 503
        forced = await client.get("/refresh/ACCESS_TOKEN", params={"force": "true"})
        assert forced.status_code == 200, forced.text

        found = await metadata(client, "ACCESS_TOKEN")
        assert (found["status"], found["failure_count"], found["last_error"]) == ("ok", 0, None)


class TestLostRace:
    async def test_refresh_token_replaced_mid_run_is_not_marked_dead(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        """invalid_grant, but the stored refresh token changed since the run began."""
        await setup_oauth(client, token_server)
        token_server.state.queue_faults("invalid_grant")
        fresh = token_server.state.issue_refresh_token(CLIENT_ID)
        gate = threading.Event()
        token_server.state.gate = gate

        refreshing = asyncio.create_task(client.get("/refresh/ACCESS_TOKEN"))
        # The run has loaded the old refresh token and waits for the upstream's answer.
        await wait_at_gate(token_server, 1)
        replaced = await client.put("/v1/secrets/REFRESH_TOKEN/value", json={"value": fresh})
        assert replaced.status_code == 200, replaced.text
        token_server.state.gate = None
        gate.set()
        response = await refreshing

        assert response.status_code == 409, response.text
        error = response.json()["error"]
        assert error["type"] == "superseded"
        assert error["secrets"] == ["REFRESH_TOKEN"]
        for name in ("ACCESS_TOKEN", "REFRESH_TOKEN"):
            assert (await metadata(client, name))["status"] == "ok"
        assert await secret_value(client, "REFRESH_TOKEN") == fresh
        assert (await client.get("/refresh/ACCESS_TOKEN")).status_code == 200

    async def test_endpoints_writing_the_same_secrets_take_turns(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        """Two endpoints refreshing one refresh token never both spend it."""
        await add_twin_endpoint(client, token_server)
        gate = threading.Event()
        token_server.state.gate = gate

        first = asyncio.create_task(client.get("/refresh/ACCESS_TOKEN"))
        await wait_at_gate(token_server, 1)
        twin = asyncio.create_task(client.get("/api/services/oauth/twin"))
        # The twin waits for its turn behind the first run, which awaits its answer.
        await asyncio.sleep(0.5)
        assert token_server.state.token_requests == 1
        assert not twin.done()
        token_server.state.gate = None
        gate.set()
        responses = await asyncio.gather(first, twin)

        for response in responses:
            assert response.status_code == 200, response.text
        # The twin read the rotated refresh token once the first run had stored it.
        assert [r["error"] for r in token_server.state.requests] == [None, None]
        for name in ("ACCESS_TOKEN", "REFRESH_TOKEN"):
            assert (await metadata(client, name))["status"] == "ok"
        assert (await client.get("/refresh/ACCESS_TOKEN")).status_code == 200

    async def test_a_run_that_did_not_take_turns_is_adopted(
        self, app: FastAPI, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        """invalid_grant because a writer outside this process's turns (a replica of an older
        version, a second process on SQLite) rotated the token first: adopt its run."""
        await add_twin_endpoint(client, token_server)
        gate = threading.Event()
        token_server.state.gate = gate
        twin = asyncio.create_task(client.get("/api/services/oauth/twin"))
        await wait_at_gate(token_server, 1)
        token_server.state.gate = None
        # Another runner on the same database, sharing no turns with the app's runner.
        state = app.state
        other = Runner(state.session_factory, state.keyring, state.runner.outbound, state.settings)
        actor = Actor(kind="system", name="other-replica", permissions=frozenset({"*"}))
        outcome = await other.run_endpoint("oauth", "refresh-token", actor=actor, trigger="refresh")
        assert outcome.status == "succeeded", outcome.error_body
        gate.set()
        response = await twin

        assert response.status_code == 200, response.text
        assert response.json()["adopted"] is True
        assert response.json()["run_id"] == outcome.run_id
        # The strict server saw the twin reuse the spent token: tokenfarm doesn't mark the
        # secrets dead for a grant someone else spent.
        assert token_server.state.requests[0]["error"] == "invalid_grant"
        for name in ("ACCESS_TOKEN", "REFRESH_TOKEN"):
            assert (await metadata(client, name))["status"] == "ok"
