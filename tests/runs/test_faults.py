"""The fault matrix: every upstream fault and every refused run leaves the secrets as they were.

Each case runs `GET /refresh/ACCESS_TOKEN` through the real API against the loopback token server
and checks the status, the error, the stored secrets, the run log, the secret's metadata, and that
no secret value (canaries) shows up in any answer or in the server log.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    TokenServer,
    canonical_action,
    create_secret,
    secret_value,
    setup_oauth,
)

TARGETS = ("ACCESS_TOKEN", "REFRESH_TOKEN")
# What the broken_json fault's truncated body would have handed out as an access token.
TRUNCATED_TOKEN = "at_truncated"


@dataclass
class Stored:
    """A secret's current value, version and history length, as the API reports them."""

    value: Any
    version: int | None
    history: int


async def stored(client: httpx.AsyncClient, name: str) -> Stored:
    """Read what is stored for one secret."""
    value = await client.get(f"/v1/secrets/{name}/value")
    versions = await client.get(f"/v1/secrets/{name}/versions")
    assert versions.status_code == 200, versions.text
    if value.status_code == 404:
        return Stored(None, None, len(versions.json()))
    assert value.status_code == 200, value.text
    return Stored(value.json()["value"], value.json()["version"], len(versions.json()))


async def snapshot(client: httpx.AsyncClient) -> dict[str, Stored]:
    """Both rotated secrets as they are now."""
    return {name: await stored(client, name) for name in TARGETS}


@dataclass
class Primed:
    """The canonical refresh after one successful rotation, and every value seen so far."""

    canaries: list[str]


async def prime(client: httpx.AsyncClient, server: TokenServer) -> Primed:
    """Set up the canonical refresh and rotate once, so both secrets hold issued tokens."""
    setup = await setup_oauth(client, server)
    response = await client.get("/refresh/ACCESS_TOKEN")
    assert response.status_code == 200, response.text
    canaries = [
        CLIENT_ID,
        CLIENT_SECRET,
        setup.refresh_token,
        await secret_value(client, "ACCESS_TOKEN"),
        await secret_value(client, "REFRESH_TOKEN"),
    ]
    server.state.reset_counters()
    return Primed(canaries=canaries)


@pytest.fixture
def debug_log(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> pytest.LogCaptureFixture:
    """Capture every logger at DEBUG (after the app configured logging, hence `client`)."""
    caplog.set_level(logging.DEBUG)
    for name in list(logging.root.manager.loggerDict):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def assert_no_canary(canaries: list[str], **texts: str) -> None:
    """No secret value appears in any of the texts (named for the failure message)."""
    for where, text in texts.items():
        for canary in canaries:
            assert canary not in text, f"a secret value leaked into {where}"


async def failed_run(
    client: httpx.AsyncClient, run_id: str
) -> tuple[httpx.Response, httpx.Response]:
    """The run log filtered to failed runs of ACCESS_TOKEN, and the run's detail."""
    listing = await client.get("/v1/runs", params={"secret": "ACCESS_TOKEN", "status": "failed"})
    assert listing.status_code == 200, listing.text
    assert run_id in [run["id"] for run in listing.json()]
    detail = await client.get(f"/v1/runs/{run_id}")
    assert detail.status_code == 200, detail.text
    return listing, detail


FAULTS = [
    # fault, status, error type, part of the message, error class, token requests
    # (a refresh that may have reached the server is not retried: it may have rotated the
    # refresh token; tests/runs/test_rotation_safety.py)
    ("http_500", 502, "upstream_ambiguous", "answered 500", "transient", 1),
    ("html", 502, "bad_upstream_response", "not a JSON object (text/html)", "permanent", 1),
    (
        "broken_json",
        502,
        "bad_upstream_response",
        "not a JSON object (application/json)",
        "permanent",
        1,
    ),
    ("no_access_token", 502, "thrown", "no access_token", "permanent", 1),
    ("invalid_client", 502, "upstream_error", "invalid_client", "permanent", 1),
    ("hang", 504, "upstream_ambiguous", "no answer within 1 s", "transient", 1),
]


class TestUpstreamFaults:
    @pytest.mark.parametrize(
        ("fault", "status", "error_type", "fragment", "error_class", "requests"),
        FAULTS,
        ids=[f[0] for f in FAULTS],
    )
    async def test_fault_keeps_secrets_and_is_reported_without_values(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        debug_log: pytest.LogCaptureFixture,
        fault: str,
        status: int,
        error_type: str,
        fragment: str,
        error_class: str,
        requests: int,
    ) -> None:
        primed = await prime(client, token_server)
        before = await snapshot(client)
        token_server.state.fault = fault

        response = await client.get("/refresh/ACCESS_TOKEN")

        assert response.status_code == status, response.text
        body = response.json()
        assert body["status"] == "failed"
        assert body["error"]["type"] == error_type
        assert fragment in body["error"]["message"]
        assert body["error"]["error_class"] == error_class
        assert body["secret"] == "ACCESS_TOKEN"
        assert body["version"] == before["ACCESS_TOKEN"].version
        assert token_server.state.token_requests == requests
        assert await snapshot(client) == before

        listing, detail = await failed_run(client, body["run_id"])
        run = detail.json()
        assert run["http_status"] == status
        assert run["error_type"] == error_type
        assert run["error_class"] == error_class
        assert run["trigger"] == "refresh"
        assert sorted(run["secrets"]) == list(TARGETS)
        failing = [entry for entry in run["trace"] if entry["outcome"] == "failed"]
        assert failing and failing[-1]["error"]["type"] == error_type

        metadata = await client.get("/v1/secrets/ACCESS_TOKEN")
        assert metadata.json()["status"] == "failing"
        assert metadata.json()["failure_count"] == 1
        assert metadata.json()["last_error"].startswith(f"{error_type} ({error_class}): ")

        assert_no_canary(
            [*primed.canaries, TRUNCATED_TOKEN],
            response=response.text,
            run_log=listing.text,
            run_detail=detail.text,
            metadata=metadata.text,
            server_log=debug_log.text,
        )

    async def test_success_after_a_fault_clears_the_failing_status(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await prime(client, token_server)
        token_server.state.fault = "http_500"
        assert (await client.get("/refresh/ACCESS_TOKEN")).status_code == 502
        token_server.state.fault = None

        response = await client.get("/refresh/ACCESS_TOKEN")

        assert response.status_code == 200, response.text
        metadata = (await client.get("/v1/secrets/ACCESS_TOKEN")).json()
        assert metadata["status"] == "ok"
        assert metadata["last_error"] is None
        assert metadata["failure_count"] == 0


async def make_refresh_token_shared(client: httpx.AsyncClient) -> None:
    """Recreate REFRESH_TOKEN with the same value as one value for all environments."""
    value = await secret_value(client, "REFRESH_TOKEN")
    assert (await client.delete("/v1/secrets/REFRESH_TOKEN")).status_code == 204
    await create_secret(client, "REFRESH_TOKEN", value, environment_specific=False)


class TestRefusedTargets:
    @pytest.mark.parametrize("target", TARGETS)
    async def test_locked_target_is_refused_before_any_call(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        debug_log: pytest.LogCaptureFixture,
        target: str,
    ) -> None:
        primed = await prime(client, token_server)
        response = await client.patch(f"/v1/secrets/{target}", json={"locked": True})
        assert response.status_code == 200, response.text
        before = await snapshot(client)

        response = await client.get("/refresh/ACCESS_TOKEN")

        assert response.status_code == 409, response.text
        error = response.json()["error"]
        assert error["type"] == "secret_locked"
        assert target in error["message"]
        assert token_server.state.token_requests == 0
        assert await snapshot(client) == before
        _, detail = await failed_run(client, response.json()["run_id"])
        assert detail.json()["trace"] == []
        assert_no_canary(
            primed.canaries, response=response.text, run_detail=detail.text, log=debug_log.text
        )

    @pytest.mark.parametrize("target", TARGETS)
    async def test_target_that_is_not_environment_specific_is_refused_before_any_call(
        self, client: httpx.AsyncClient, token_server: TokenServer, target: str
    ) -> None:
        await setup_oauth(client, token_server)
        if target == "ACCESS_TOKEN":
            # It holds no value yet, so the flag may still change.
            response = await client.patch(
                "/v1/secrets/ACCESS_TOKEN", json={"environment_specific": False}
            )
            assert response.status_code == 200, response.text
        else:
            await make_refresh_token_shared(client)
        before = await snapshot(client)

        response = await client.get("/refresh/ACCESS_TOKEN")

        assert response.status_code == 409, response.text
        error = response.json()["error"]
        assert error["type"] == "secret_not_environment_specific"
        assert target in error["message"]
        assert token_server.state.token_requests == 0
        assert await snapshot(client) == before
        await failed_run(client, response.json()["run_id"])


class TestRefreshRoute:
    async def test_unknown_secret_is_404(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/refresh/UNKNOWN")

        assert response.status_code == 404, response.text
        error = response.json()["error"]
        assert error["type"] == "not_found"
        assert "UNKNOWN" in error["message"]

    async def test_secret_without_refresh_endpoint_says_how_to_bind_one(
        self, client: httpx.AsyncClient
    ) -> None:
        await create_secret(client, "PLAIN", "value-canary-31337")

        response = await client.get("/refresh/PLAIN")

        assert response.status_code == 409, response.text
        error = response.json()["error"]
        assert error["type"] == "conflict"
        assert "PATCH /v1/secrets/PLAIN" in error["message"]
        assert '"refresh_endpoint"' in error["message"]
        assert (await client.get("/v1/runs")).json() == []

    async def test_answer_matches_its_schema(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await setup_oauth(client, token_server)

        response = await client.get("/refresh/ACCESS_TOKEN")

        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {
            "run_id",
            "status",
            "error",
            "response",
            "coalesced",
            "adopted",
            "secret",
            "version",
            "expires_at",
        }
        assert body["error"] is None
        # The same rendering as every other timestamp of the API (pydantic's `Z` form).
        assert body["expires_at"].endswith("Z")
        metadata = (await client.get("/v1/secrets/ACCESS_TOKEN")).json()
        assert body["expires_at"] == metadata["expires_at"]


class TestConcurrentWrite:
    async def test_secret_changed_during_the_run_fails_it_and_writes_nothing(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await prime(client, token_server)
        before = await snapshot(client)
        token_server.state.latency_seconds = 0.5
        refresh = asyncio.create_task(client.get("/refresh/ACCESS_TOKEN"))
        for _ in range(500):
            if token_server.state.token_requests:
                break
            await asyncio.sleep(0.01)
        assert token_server.state.token_requests == 1
        # An operator sets the refresh token by hand while the run waits for the upstream.
        written = await client.put(
            "/v1/secrets/REFRESH_TOKEN/value", json={"value": "rt_set-by-hand"}
        )
        assert written.status_code == 200, written.text

        response = await refresh

        assert response.status_code == 409, response.text
        body = response.json()
        assert body["error"]["type"] == "version_conflict"
        after = await snapshot(client)
        assert after["ACCESS_TOKEN"] == before["ACCESS_TOKEN"]
        assert after["REFRESH_TOKEN"].value == "rt_set-by-hand"
        assert after["REFRESH_TOKEN"].version == before["REFRESH_TOKEN"].version + 1
        for name in TARGETS:
            history = (await client.get(f"/v1/secrets/{name}/versions")).json()
            assert body["run_id"] not in [entry["run_id"] for entry in history]
        _, detail = await failed_run(client, body["run_id"])
        assert detail.json()["error_type"] == "version_conflict"
        # Someone else wrote the secret: that is no failure of the secret itself.
        for name in TARGETS:
            assert (await client.get(f"/v1/secrets/{name}")).json()["status"] == "ok"


def client_credentials_action(token_url: str, *, guarded: bool) -> list[dict[str, Any]]:
    """The canonical action asking for client_credentials, which answers no refresh_token.

    Unguarded, it writes REFRESH_TOKEN without checking that the answer carried one.
    """
    action = canonical_action(token_url)
    action[1]["body"] = {"form": {"grant_type": "client_credentials"}}
    if not guarded:
        then = action[2]["then"]
        then[1] = copy.deepcopy(then[1]["then"][0])
    return action


class TestNoRefreshTokenInAnswer:
    @pytest.mark.parametrize("guarded", [True, False], ids=["guarded", "unguarded"])
    async def test_answer_without_refresh_token_never_erases_the_stored_one(
        self, client: httpx.AsyncClient, token_server: TokenServer, guarded: bool
    ) -> None:
        await prime(client, token_server)
        before = await snapshot(client)
        service = {
            "slug": "cc",
            "name": "Client credentials",
            "endpoints": [
                {
                    "readable_id": "token",
                    "name": "Token",
                    "action": client_credentials_action(token_server.token_url, guarded=guarded),
                }
            ],
        }
        assert (await client.post("/v1/services", json=service)).status_code == 201
        response = await client.patch(
            "/v1/secrets/ACCESS_TOKEN", json={"refresh_endpoint": "cc/token"}
        )
        assert response.status_code == 200, response.text

        response = await client.get("/refresh/ACCESS_TOKEN")

        after = await snapshot(client)
        assert after["REFRESH_TOKEN"] == before["REFRESH_TOKEN"]
        assert token_server.state.is_active(before["REFRESH_TOKEN"].value)
        if guarded:
            assert response.status_code == 200, response.text
            assert after["ACCESS_TOKEN"].version == before["ACCESS_TOKEN"].version + 1
            assert token_server.state.is_active(after["ACCESS_TOKEN"].value)
        else:
            # All or nothing: the empty write fails the run, so the access token isn't kept either.
            assert response.json()["status"] == "failed", response.text
            assert response.json()["error"]["type"] == "binding_error"
            assert after["ACCESS_TOKEN"] == before["ACCESS_TOKEN"]
