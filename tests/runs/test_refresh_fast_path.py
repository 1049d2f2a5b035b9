"""The fast path of `GET /refresh/{secret}` (app/runs/router.py:refresh_secret_fast) answers byte
for byte what the route answers, and hands every error before a run to the route."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from app.ratelimit import RouteKind
from tests.auth.conftest import Callers
from tests.auth.conftest import callers as callers  # the fixture, for this module
from tests.conftest import TokenServer, create_secret, setup_oauth
from tests.fastpaths import answer_of, fast_and_routed
from tests.ratelimits import limit_app, refusals

# Two runs differ in their run id; two successful ones also in the expiry they stored and in the
# version they made (the fast one makes version n, the routed one n + 1).
RUN_ID = {r'"run_id":"[^"]*"': b'"run_id":"RUN"'}
NEW_VALUE = {
    **RUN_ID,
    r'"version":\d+': b'"version":0',
    r'"expires_at":"[^"]*"': b'"expires_at":"T"',
}


class TestRefreshFastPath:
    """Each case is asked twice in the same app: with the fast paths on, then off (routed).
    Status, every header but the request id (content-type, content-length) and the body must be
    the same bytes, once the fields named above (run id; for a success also version and expiry)
    are normalised."""

    @pytest.fixture(autouse=True)
    async def oauth(self, client: httpx.AsyncClient, token_server: TokenServer) -> None:
        """The canonical refresh, and the owner known to the actor cache."""
        await setup_oauth(client, token_server)
        assert (await client.get("/v1/secrets")).status_code == 200

    async def test_a_refresh_is_the_routes_answer(
        self, app: FastAPI, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        fast, routed = await fast_and_routed(app, client, "/refresh/ACCESS_TOKEN", fast=True)

        assert fast.status_code == 200, fast.text
        assert (fast.json()["version"], routed.json()["version"]) == (1, 2)
        assert fast.json()["run_id"] != routed.json()["run_id"]
        assert answer_of(fast, NEW_VALUE) == answer_of(routed, NEW_VALUE)
        assert token_server.state.token_requests == 2

    async def test_a_run_failed_upstream_is_the_routes_502(
        self, app: FastAPI, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        token_server.state.fault = "broken_json"

        fast, routed = await fast_and_routed(app, client, "/refresh/ACCESS_TOKEN", fast=True)

        assert fast.status_code == 502, fast.text
        assert fast.json()["status"] == "failed"
        assert answer_of(fast, RUN_ID) == answer_of(routed, RUN_ID)

    async def test_a_refused_grant_is_the_routes_409_needs_reauth(
        self, app: FastAPI, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        token_server.state.queue_faults("invalid_grant")
        assert (await client.get("/refresh/ACCESS_TOKEN")).status_code == 502

        fast, routed = await fast_and_routed(app, client, "/refresh/ACCESS_TOKEN", fast=True)

        assert fast.status_code == 409, fast.text
        assert fast.json()["error"]["type"] == "needs_reauth"
        assert answer_of(fast, RUN_ID) == answer_of(routed, RUN_ID)
        assert token_server.state.token_requests == 1

    @pytest.mark.parametrize(
        ("path", "status"),
        [
            ("/refresh/NO_SUCH_SECRET", 404),  # unknown secret
            ("/refresh/UNBOUND", 409),  # no refresh_endpoint
            ("/refresh/not%20a%20name", 422),  # outside SECRET_NAME_PATTERN
        ],
    )
    async def test_errors_before_a_run_are_the_routes(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        path: str,
        status: int,
    ) -> None:
        await create_secret(client, "UNBOUND", "x")

        handed_on, routed = await fast_and_routed(app, client, path, fast=False)

        assert handed_on.status_code == status, handed_on.text
        assert answer_of(handed_on) == answer_of(routed)
        assert token_server.state.token_requests == 0

    @pytest.mark.parametrize("permissions", [("services.run:other",), ("runs.read",)])
    async def test_a_missing_permission_is_the_routes_403(
        self,
        app: FastAPI,
        callers: Callers,
        token_server: TokenServer,
        permissions: tuple[str, ...],
    ) -> None:
        caller = await callers.holding(*permissions)
        assert (await caller.get("/refresh/ACCESS_TOKEN")).status_code == 403  # known now

        refused, routed = await fast_and_routed(app, caller, "/refresh/ACCESS_TOKEN", fast=False)

        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["type"] == "permission_denied"
        assert answer_of(refused) == answer_of(routed)
        assert token_server.state.token_requests == 0

    async def test_a_rate_limit_is_the_routes_429(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        clock = limit_app(app, monkeypatch, RouteKind.REFRESH, per_credential="1/minute")
        assert (await client.get("/refresh/ACCESS_TOKEN")).status_code == 200
        clock.advance(15)

        fast, routed = await fast_and_routed(app, client, "/refresh/ACCESS_TOKEN", fast=True)

        assert fast.status_code == 429, fast.text
        assert fast.json()["error"]["type"] == "rate_limited"
        assert fast.headers["retry-after"] == "45"
        assert answer_of(fast) == answer_of(routed)
        assert token_server.state.token_requests == 1
        assert refusals(app, "refresh", "credential") == 2
