"""On-demand refreshes of a secret that keeps failing back off as expiry-driven ones do
(app/runs/refresh.py:ensure_not_backing_off): after TOKENFARM_REFRESH_BACKOFF_AFTER_FAILURES
failures in a row, `/refresh` (fast path or routed) and refresh on read answer 503
`refresh_backoff` with Retry-After and call nothing, until the backoff has passed or an operator
(`secrets.manage`) forces one."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from app.db import utcnow
from app.runs.models import Run
from tests.auth.conftest import Callers
from tests.auth.conftest import callers as callers  # the fixture, for this module
from tests.conftest import TokenServer, setup_oauth
from tests.fastpaths import answer_of, fast_and_routed
from tests.ratelimits import refusals

REFRESH = "/refresh/ACCESS_TOKEN"
RUN_ID = {r'"run_id":"[^"]*"': b'"run_id":"RUN"'}


async def failing(
    client: httpx.AsyncClient, server: TokenServer, times: int, *, expiring_value: bool = False
) -> None:
    """The canonical refresh, failing upstream `times` in a row (one token request each); with
    `expiring_value`, ACCESS_TOKEN has a value set by hand first, expiring in 10 s."""
    await setup_oauth(client, server)
    if expiring_value:
        expires_at = (utcnow() + timedelta(seconds=10)).isoformat()
        response = await client.put(
            "/v1/secrets/ACCESS_TOKEN/value", json={"value": "old", "expires_at": expires_at}
        )
        assert response.status_code == 200, response.text
    server.state.fault = "broken_json"
    for _ in range(times):
        response = await client.get(REFRESH)
        assert response.status_code == 502, response.text
    assert server.state.token_requests == times
    secret = (await client.get("/v1/secrets/ACCESS_TOKEN")).json()
    assert (secret["status"], secret["failure_count"]) == ("failing", times)


def assert_backing_off(response: httpx.Response) -> int:
    """503 `refresh_backoff` with a Retry-After of the first backoff step (30 s + up to 10 %)."""
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["type"] == "refresh_backoff"
    assert error["secret"] == "ACCESS_TOKEN"
    assert "force=true" in error["message"]
    seconds = int(response.headers["retry-after"])
    assert 29 <= seconds <= 34, seconds
    return seconds


class TestRefreshBackoff:
    async def test_a_secret_that_keeps_failing_is_not_refreshed_again_at_once(
        self, app: FastAPI, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await failing(client, token_server, 3)

        refused = await client.get(REFRESH)

        retry_after = assert_backing_off(refused)
        assert token_server.state.token_requests == 3  # nothing was called
        assert refusals(app, "refresh", "refresh_backoff") == 1
        # Every caller and replica computes the same window.
        assert int((await client.get(REFRESH)).headers["retry-after"]) in (
            retry_after,
            retry_after - 1,
        )

    async def test_fewer_failures_in_a_row_may_still_be_retried_at_once(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await failing(client, token_server, 2)
        token_server.state.fault = None

        response = await client.get(REFRESH)

        assert response.status_code == 200, response.text
        assert token_server.state.token_requests == 3

    async def test_once_the_backoff_has_passed_a_refresh_runs(
        self, app: FastAPI, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await failing(client, token_server, 3)
        token_server.state.fault = None
        assert (await client.get(REFRESH)).status_code == 503
        # The failures happened 34 s ago (the longest first step, with its jitter).
        async with app.state.session_factory() as session, session.begin():
            await session.execute(update(Run).values(finished_at=utcnow() - timedelta(seconds=34)))

        response = await client.get(REFRESH)

        assert response.status_code == 200, response.text
        assert token_server.state.token_requests == 4
        secret = (await client.get("/v1/secrets/ACCESS_TOKEN")).json()
        assert (secret["status"], secret["failure_count"]) == ("ok", 0)

    async def test_an_operator_may_force_one_a_caller_may_not(
        self, client: httpx.AsyncClient, token_server: TokenServer, callers: Callers
    ) -> None:
        await failing(client, token_server, 3)
        token_server.state.fault = None
        refresher = await callers.holding(
            "services.run:oauth",
            "secrets.update_from_service:ACCESS_TOKEN",
            "secrets.update_from_service:REFRESH_TOKEN",
        )

        assert_backing_off(await refresher.get(REFRESH, params={"force": "true"}))
        assert token_server.state.token_requests == 3
        forced = await client.get(REFRESH, params={"force": "true"})  # the owner

        assert forced.status_code == 200, forced.text
        assert token_server.state.token_requests == 4

    async def test_a_refresh_on_read_backs_off_too(
        self, app: FastAPI, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await failing(client, token_server, 3, expiring_value=True)

        read = await client.get("/v1/secrets/ACCESS_TOKEN/value", params={"min_valid_seconds": 60})

        assert_backing_off(read)
        assert token_server.state.token_requests == 3
        assert refusals(app, "value_read", "refresh_backoff") == 1

    async def test_the_fast_path_answers_what_the_route_answers(
        self, app: FastAPI, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await failing(client, token_server, 3)

        fast, routed = await fast_and_routed(app, client, REFRESH, fast=True)

        assert_backing_off(fast)
        assert answer_of(fast, RUN_ID) == answer_of(routed, RUN_ID)
        assert token_server.state.token_requests == 3

    @pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
    async def test_a_refusal_before_any_call_starts_no_backoff(
        self, client: httpx.AsyncClient, token_server: TokenServer, callers: Callers
    ) -> None:
        """Only runs that called (and failed) count: refused ones leave the window alone."""
        await failing(client, token_server, 2)
        token_server.state.fault = None
        lacking = await callers.holding("services.run:oauth")  # may not write the targets
        for _ in range(3):
            assert (await lacking.get(REFRESH)).status_code == 403

        assert (await client.get(REFRESH)).status_code == 200
