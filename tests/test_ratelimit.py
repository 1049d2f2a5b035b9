"""Rate limits (app/ratelimit.py): per caller and per client address on refreshes, service
endpoint runs and value reads, 429 `rate_limited` with Retry-After, counted in
`tokenfarm_rate_limited`; in memory by default, in Redis for replicas."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio
from fastapi import FastAPI
from pydantic import ValidationError

from app.auth.actor import Actor
from app.config import Settings
from app.errors import RateLimited
from app.ratelimit import CountedBy, RateLimiter, RouteKind, Rule
from tests.auth.conftest import Callers
from tests.auth.conftest import callers as callers  # the fixture, for this module
from tests.conftest import create_secret
from tests.ratelimits import limit_app, refusals
from tests.secrets.conftest import create_service

REDIS_URL = os.environ.get("TOKENFARM_TEST_REDIS", "redis://127.0.0.1:6379/0")
# Limits count in memory, not in the database: one backend is enough.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

ROUTES = {
    RouteKind.VALUE_READ: "/v1/secrets/TOKEN/value",
    RouteKind.REFRESH: "/refresh/TOKEN",
    RouteKind.ENDPOINT: "/api/services/svc/ping",
}


@pytest.fixture
async def routes(client: httpx.AsyncClient) -> None:
    """A secret with a value, bound to an endpoint that only logs: all three routes answer."""
    await create_service(client, "svc", "ping")
    await create_secret(client, "TOKEN", "v1", refresh_endpoint="svc/ping")


def other_address(app: FastAPI, credential: str, address: str) -> httpx.AsyncClient:
    """A client of the app with `credential`, calling from another client address."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(address, 4321)),
        base_url="http://tokenfarm.test",
        headers={"Authorization": f"Bearer {credential}"},
    )


def assert_limited(response: httpx.Response, per: str, retry_after: int | None = None) -> None:
    """429 `rate_limited` naming whom it counted, with a whole Retry-After in the window."""
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["type"] == "rate_limited"
    assert f"from this {per}" in error["message"]
    seconds = int(response.headers["retry-after"])
    assert error["retry_after_seconds"] == seconds
    if retry_after is None:
        assert 1 <= seconds <= 60
    else:
        assert seconds == retry_after


@sqlite_only
@pytest.mark.usefixtures("routes")
class TestLimits:
    @pytest.mark.parametrize("kind", list(ROUTES))
    async def test_a_caller_over_its_limit_is_refused_with_retry_after(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        monkeypatch: pytest.MonkeyPatch,
        kind: RouteKind,
    ) -> None:
        clock = limit_app(app, monkeypatch, kind, per_credential="3/minute")
        path = ROUTES[kind]
        for _ in range(3):
            response = await client.get(path)
            assert response.status_code == 200, response.text
        clock.advance(20)

        refused = await client.get(path)

        assert_limited(refused, "caller", retry_after=40)
        assert refusals(app, kind, "credential") == 1
        assert refusals(app, kind, "address") == 0

    @pytest.mark.parametrize("kind", list(ROUTES))
    async def test_callers_have_budgets_of_their_own_an_address_one_for_all(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        callers: Callers,
        monkeypatch: pytest.MonkeyPatch,
        kind: RouteKind,
    ) -> None:
        permissions = ("secrets.read:TOKEN", "services.run:svc")
        key = await callers.key(await callers.account(*permissions), "limited")
        third = await callers.key(await callers.account(*permissions), "elsewhere")
        limit_app(app, monkeypatch, kind, per_credential="2/minute", per_address="3/minute")
        path = ROUTES[kind]
        other = callers.client(key)
        assert [(await client.get(path)).status_code for _ in range(2)] == [200, 200]
        # Over the owner's own limit: the address's budget is not spent by it.
        assert_limited(await client.get(path), "caller")

        # Another credential has a budget of its own, but the address has one request left.
        assert (await other.get(path)).status_code == 200
        assert_limited(await other.get(path), "client address")

        # Another address has a budget of its own; a caller's is the same everywhere (the
        # request its address refused counted for it).
        async with other_address(app, key, "192.0.2.7") as elsewhere:
            assert_limited(await elsewhere.get(path), "caller")
        async with other_address(app, third, "192.0.2.7") as elsewhere:
            assert (await elsewhere.get(path)).status_code == 200
        assert refusals(app, kind, "credential") == 2
        assert refusals(app, kind, "address") == 1

    async def test_the_window_resets(
        self, app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        clock = limit_app(app, monkeypatch, RouteKind.VALUE_READ, per_credential="2/minute")
        path = ROUTES[RouteKind.VALUE_READ]
        assert [(await client.get(path)).status_code for _ in range(3)] == [200, 200, 429]
        clock.advance(59)
        assert_limited(await client.get(path), "caller", retry_after=1)

        clock.advance(1)

        assert [(await client.get(path)).status_code for _ in range(3)] == [200, 200, 429]

    async def test_routes_without_rules_are_not_limited(
        self, app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        limit_app(app, monkeypatch, RouteKind.REFRESH, per_credential="1/minute")
        for _ in range(5):
            assert (await client.get(ROUTES[RouteKind.VALUE_READ])).status_code == 200
            assert (await client.get("/v1/secrets/TOKEN")).status_code == 200

    async def test_a_refused_request_does_nothing(
        self, app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        limit_app(app, monkeypatch, RouteKind.ENDPOINT, per_credential="1/minute")
        path = ROUTES[RouteKind.ENDPOINT]
        assert (await client.get(path)).status_code == 200
        assert_limited(await client.get(path), "caller")
        assert_limited(await client.post(path, json={"x": 1}), "caller")

        runs = (await client.get("/v1/runs", params={"service": "svc"})).json()

        assert len(runs) <= 1  # only the first run (when its endpoint logs runs at all)

    async def test_the_metric_is_shown_from_the_start_and_counts(
        self, app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        before = (await client.get("/metrics")).text
        for kind in RouteKind:
            for limit in ("credential", "address", "refresh_backoff"):
                line = f'tokenfarm_rate_limited_total{{limit="{limit}",route="{kind}"}} 0.0'
                assert line in before
        limit_app(app, monkeypatch, RouteKind.VALUE_READ, per_address="1/minute")
        await client.get(ROUTES[RouteKind.VALUE_READ])
        await client.get(ROUTES[RouteKind.VALUE_READ])

        after = (await client.get("/metrics")).text

        assert 'tokenfarm_rate_limited_total{limit="address",route="value_read"} 1.0' in after
        assert "127.0.0.1" not in after


class TestSettings:
    def test_the_defaults(self) -> None:
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
        assert settings.rate_limit_storage == "memory://"
        assert settings.rate_limit_refresh_per_credential == "60/minute"
        assert settings.rate_limit_refresh_per_address == "60/minute"
        assert settings.rate_limit_endpoint_per_credential == "60/minute"
        assert settings.rate_limit_endpoint_per_address == "60/minute"
        assert settings.rate_limit_value_read_per_credential == "1200/minute"
        assert settings.rate_limit_value_read_per_address == "1200/minute"
        limiter = RateLimiter.from_settings(settings)
        assert [
            (rule.by, str(rule.windows[0].item)) for rule in limiter.rules[RouteKind.REFRESH]
        ] == [
            (CountedBy.CREDENTIAL, "60 per 1 minute"),
            (CountedBy.ADDRESS, "60 per 1 minute"),
        ]

    def test_an_empty_limit_is_none_and_several_may_be_joined(self) -> None:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            rate_limit_value_read_per_address="",
            rate_limit_value_read_per_credential="10/second; 600/hour",
        )
        rules = RateLimiter.from_settings(settings).rules[RouteKind.VALUE_READ]
        assert [(rule.by, [str(window.item) for window in rule.windows]) for rule in rules] == [
            (CountedBy.CREDENTIAL, ["10 per 1 second", "600 per 1 hour"])
        ]

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("rate_limit_refresh_per_credential", "lots"),
            ("rate_limit_endpoint_per_address", "5/fortnight"),
            ("rate_limit_value_read_per_address", "1/0 seconds"),
            ("rate_limit_storage", "memcached://127.0.0.1:11211"),
        ],
    )
    def test_a_bad_value_stops_start_up_naming_it(self, name: str, value: str) -> None:
        with pytest.raises(ValidationError) as raised:
            Settings(_env_file=None, **{name: value})  # type: ignore[arg-type]
        assert name in str(raised.value)


def unique_actor() -> Actor:
    """A caller no other test (or test run) sharing the Redis server counts."""
    return Actor("service_account", f"limits-{uuid.uuid4().hex}", frozenset())


def scope_from(address: str) -> dict[str, object]:
    """The ASGI scope of a request from `address` (a fresh one per request)."""
    return {"type": "http", "client": (address, 1234)}


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """The local Redis; skipped with a reason when unreachable, except under CI=true."""
    client = redis.asyncio.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        await client.ping()
    except (redis.RedisError, OSError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at {REDIS_URL} is unreachable: {exc!r} (CI=true, so an error)")
        pytest.skip(f"Redis at {REDIS_URL} is unreachable: {exc!r}")
    finally:
        await client.aclose()
    yield REDIS_URL


class TestRedisStorage:
    async def test_replicas_share_one_budget(self, redis_url: str) -> None:
        rules = {RouteKind.REFRESH: [Rule.parse(CountedBy.CREDENTIAL, "3/minute")]}
        replicas = [RateLimiter(rules, redis_url) for _ in range(2)]  # type: ignore[arg-type]
        actor, other = unique_actor(), unique_actor()
        try:
            await replicas[0].check(scope_from("a"), RouteKind.REFRESH, actor)
            await replicas[1].check(scope_from("a"), RouteKind.REFRESH, actor)
            await replicas[0].check(scope_from("a"), RouteKind.REFRESH, actor)
            with pytest.raises(RateLimited) as refused:
                await replicas[1].check(scope_from("a"), RouteKind.REFRESH, actor)
            assert 1 <= refused.value.retry_after_seconds <= 60
            await replicas[1].check(scope_from("a"), RouteKind.REFRESH, other)
        finally:
            for replica in replicas:
                await replica.close()

    async def test_the_keys_name_no_caller(self, redis_url: str) -> None:
        rules = {RouteKind.VALUE_READ: [Rule.parse(CountedBy.CREDENTIAL, "5/minute")]}
        limiter = RateLimiter(rules, redis_url)  # type: ignore[arg-type]
        actor = unique_actor()
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            await limiter.check(scope_from("a"), RouteKind.VALUE_READ, actor)
            keys = [key.decode() async for key in client.scan_iter("tokenfarm*")]
            assert keys and not [key for key in keys if actor.name in key]
        finally:
            await client.aclose()
            await limiter.close()

    async def test_without_redis_requests_go_through_with_a_warning(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        rules = {RouteKind.REFRESH: [Rule.parse(CountedBy.CREDENTIAL, "1/minute")]}
        # Nothing listens on port 1.
        limiter = RateLimiter(rules, "redis://127.0.0.1:1/0")  # type: ignore[arg-type]
        actor = unique_actor()
        try:
            with caplog.at_level(logging.WARNING, logger="tokenfarm.ratelimit"):
                for _ in range(3):
                    await limiter.check(scope_from("a"), RouteKind.REFRESH, actor)
        finally:
            await limiter.close()
        warnings = [r for r in caplog.records if r.name == "tokenfarm.ratelimit"]
        assert len(warnings) == 1  # once, not per request
        assert "not counted" in warnings[0].getMessage()
