"""The fast path of `GET /v1/secrets/{name}/value` (app/secrets/router.py:read_secret_value_fast)
answers byte for byte what the route answers, and hands every other case to the route."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from app.ratelimit import RouteKind
from tests.auth.conftest import Callers
from tests.auth.conftest import callers as callers  # the fixture, for this module
from tests.conftest import create_secret
from tests.fastpaths import answer_of, fast_and_routed
from tests.ratelimits import limit_app, refusals

# The value cache, which the fast path answers from, holds values on SQLite files only.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@sqlite_only
class TestValueReadFastPath:
    """Each case is asked twice in the same app: with the fast paths on, then off (routed).
    Nothing is normalised: a read carries no run id or timing, so status, every header but the
    request id (content-type, content-length) and the body must be the same bytes."""

    async def test_a_cached_read_is_the_routes_answer(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        await create_secret(client, "TOKEN", "v1", expires_at="2031-01-02T03:04:05.678901Z")
        assert (await client.get("/v1/secrets/TOKEN/value")).status_code == 200  # cached now

        fast, routed = await fast_and_routed(app, client, "/v1/secrets/TOKEN/value", fast=True)

        assert fast.status_code == 200, fast.text
        assert fast.json()["value"] == "v1"
        assert fast.headers["content-type"] == "application/json"
        assert answer_of(fast) == answer_of(routed)

    @pytest.mark.parametrize(
        ("path", "status"),
        [
            ("/v1/secrets/NO_SUCH_SECRET/value", 404),  # unknown secret
            ("/v1/secrets/EMPTY/value", 404),  # no value yet
            ("/v1/secrets/not%20a%20name/value", 404),  # outside SECRET_NAME_PATTERN
        ],
    )
    async def test_what_the_cache_cant_answer_is_the_routes(
        self, app: FastAPI, client: httpx.AsyncClient, path: str, status: int
    ) -> None:
        await create_secret(client, "EMPTY")

        handed_on, routed = await fast_and_routed(app, client, path, fast=False)

        assert handed_on.status_code == status, handed_on.text
        assert answer_of(handed_on) == answer_of(routed)

    async def test_a_missing_permission_is_the_routes_403(
        self, app: FastAPI, client: httpx.AsyncClient, callers: Callers
    ) -> None:
        await create_secret(client, "TOKEN", "v1")
        await create_secret(client, "OTHER", "other")
        reader = await callers.holding("secrets.read:OTHER")
        assert (await reader.get("/v1/secrets/OTHER/value")).status_code == 200  # known now
        await client.get("/v1/secrets/TOKEN/value")
        assert app.state.value_cache.get("TOKEN", None) is not None

        refused, routed = await fast_and_routed(app, reader, "/v1/secrets/TOKEN/value", fast=False)

        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["permission"] == "secrets.read:TOKEN"
        assert answer_of(refused) == answer_of(routed)

    @pytest.mark.parametrize("per", ["per_credential", "per_address"])
    async def test_a_rate_limit_is_the_routes_429(
        self, app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, per: str
    ) -> None:
        await create_secret(client, "TOKEN", "v1")
        clock = limit_app(app, monkeypatch, RouteKind.VALUE_READ, **{per: "2/minute"})
        assert [(await client.get("/v1/secrets/TOKEN/value")).status_code for _ in "ab"] == [
            200,
            200,
        ]
        clock.advance(30.5)

        fast, routed = await fast_and_routed(app, client, "/v1/secrets/TOKEN/value", fast=True)

        assert fast.status_code == 429, fast.text
        assert fast.json()["error"]["type"] == "rate_limited"
        assert fast.headers["retry-after"] == "30"
        assert answer_of(fast) == answer_of(routed)
        limit = per.removeprefix("per_")
        assert refusals(app, "value_read", limit) == 2
