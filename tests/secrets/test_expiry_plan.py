"""Planning expiry-driven refreshes: the lead, the plan with its jitter, the backoff, and how
`next_refresh_at` follows values and metadata through the API."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.secrets.expiry import (
    ValueTiming,
    backoff_after_failure,
    plan_next_refresh,
    refresh_lead_seconds,
)
from app.secrets.models import Secret
from app.secrets.store import SecretStore
from tests.auth.conftest import Callers, assert_refused, error_of
from tests.auth.conftest import callers as callers  # the fixture, for this module
from tests.conftest import TokenServer, create_secret, setup_oauth

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
REFRESHER_PERMISSIONS = (
    "services.run:oauth",
    "secrets.update_from_service:ACCESS_TOKEN",
    "secrets.update_from_service:REFRESH_TOKEN",
)


class Lowest(random.Random):
    """Jitter at its lower bound (none)."""

    def uniform(self, a: float, b: float) -> float:
        return a


class Highest(random.Random):
    """Jitter at its upper bound."""

    def uniform(self, a: float, b: float) -> float:
        return b


def refreshable(**fields: Any) -> Secret:
    """A secret the scheduler may refresh, with `fields` changed."""
    values: dict[str, Any] = {
        "name": "ACCESS_TOKEN",
        "refresh_endpoint": "oauth/refresh-token",
        "refresh_as": "refresher",
        "environment_specific": True,
        "locked": False,
        "status": "ok",
        **fields,
    }
    return Secret(**values)


def written(lifetime: timedelta | None, at: datetime = NOW) -> ValueTiming:
    """A value written at `at` that lives `lifetime` (None: no expiry)."""
    return ValueTiming(expires_at=None if lifetime is None else at + lifetime, updated_at=at)


def seconds(delta: timedelta) -> float:
    return delta.total_seconds()


class TestRefreshLead:
    def test_default_is_ten_percent_of_the_lifetime(self) -> None:
        assert refresh_lead_seconds(refreshable(), written(HOUR)) == 360

    def test_lifetime_counts_from_when_the_value_was_written(self) -> None:
        value = ValueTiming(expires_at=NOW + 2 * HOUR, updated_at=NOW - 8 * HOUR)
        assert refresh_lead_seconds(refreshable(), value) == 3600

    def test_default_is_at_least_thirty_seconds(self) -> None:
        assert refresh_lead_seconds(refreshable(), written(timedelta(seconds=100))) == 30

    def test_default_is_at_most_half_the_lifetime(self) -> None:
        # A 20 s token would otherwise be due again the moment it was refreshed.
        assert refresh_lead_seconds(refreshable(), written(timedelta(seconds=20))) == 10
        assert refresh_lead_seconds(refreshable(), written(timedelta(seconds=-5))) == 0

    def test_explicit_lead_wins(self) -> None:
        secret = refreshable(refresh_before_expiry_seconds=600)
        assert refresh_lead_seconds(secret, written(HOUR)) == 600
        secret = refreshable(refresh_before_expiry_seconds=5)
        assert refresh_lead_seconds(secret, written(HOUR)) == 5


class TestPlanNextRefresh:
    def test_without_jitter_it_is_expiry_minus_lead(self) -> None:
        planned = plan_next_refresh(refreshable(), written(HOUR), NOW, rng=Lowest())
        assert planned == NOW + HOUR - timedelta(seconds=360)

    def test_jitter_is_at_most_thirty_seconds(self) -> None:
        planned = plan_next_refresh(refreshable(), written(HOUR), NOW, rng=Highest())
        assert planned == NOW + HOUR - timedelta(seconds=360 + 30)

    def test_jitter_is_at_most_ten_percent_of_the_lead(self) -> None:
        secret = refreshable(refresh_before_expiry_seconds=100)
        planned = plan_next_refresh(secret, written(HOUR), NOW, rng=Highest())
        assert planned == NOW + HOUR - timedelta(seconds=100 + 10)

    def test_random_jitter_stays_within_its_bounds_and_spreads(self) -> None:
        expires_at = NOW + HOUR
        plans = [plan_next_refresh(refreshable(), written(HOUR), NOW) for _ in range(200)]
        leads = [seconds(expires_at - planned) for planned in plans if planned is not None]
        assert len(leads) == 200
        assert all(360 <= lead <= 390 for lead in leads), (min(leads), max(leads))
        assert len(set(leads)) > 100  # values expiring together don't all fire together

    def test_a_plan_in_the_past_is_now(self) -> None:
        # Written an hour ago, two minutes left: the lead (372 s) began four minutes ago.
        value = ValueTiming(expires_at=NOW + timedelta(minutes=2), updated_at=NOW - HOUR)
        assert plan_next_refresh(refreshable(), value, NOW) == NOW
        expired = ValueTiming(expires_at=NOW - HOUR, updated_at=NOW - 2 * HOUR)
        assert plan_next_refresh(refreshable(), expired, NOW) == NOW

    def test_a_failing_secret_is_still_planned(self) -> None:
        planned = plan_next_refresh(refreshable(status="failing"), written(HOUR), NOW)
        assert planned is not None

    @pytest.mark.parametrize(
        ("fields", "lifetime"),
        [
            pytest.param({"refresh_endpoint": None}, HOUR, id="no refresh_endpoint"),
            pytest.param({"refresh_as": None}, HOUR, id="no refresh_as"),
            pytest.param({"environment_specific": False}, HOUR, id="one value for all"),
            pytest.param({"locked": True}, HOUR, id="locked"),
            pytest.param({"status": "needs_reauth"}, HOUR, id="needs_reauth"),
            pytest.param({}, None, id="no expires_at"),
        ],
    )
    def test_none_when_the_scheduler_must_not_refresh(
        self, fields: dict[str, Any], lifetime: timedelta | None
    ) -> None:
        assert plan_next_refresh(refreshable(**fields), written(lifetime), NOW) is None


class TestBackoffAfterFailure:
    @pytest.mark.parametrize(
        ("failure_count", "delay"),
        [(1, 30), (2, 60), (3, 120), (4, 240), (7, 1920), (8, 3600), (9, 3600), (10_000, 3600)],
    )
    def test_doubles_from_thirty_seconds_up_to_an_hour(
        self, failure_count: int, delay: float
    ) -> None:
        assert backoff_after_failure(failure_count, NOW, rng=Lowest()) == NOW + timedelta(
            seconds=delay
        )
        highest = backoff_after_failure(failure_count, NOW, rng=Highest())
        assert highest == NOW + timedelta(seconds=delay * 1.1)

    def test_random_jitter_stays_within_ten_percent(self) -> None:
        delays = [seconds(backoff_after_failure(3, NOW) - NOW) for _ in range(200)]
        assert all(120 <= delay <= 132 for delay in delays), (min(delays), max(delays))
        assert len(set(delays)) > 100

    def test_no_failure_yet_counts_as_the_first(self) -> None:
        assert backoff_after_failure(0, NOW, rng=Lowest()) == NOW + timedelta(seconds=30)


# --- through the API -----------------------------------------------------------------------


async def metadata(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    """A secret's metadata as the API reports it."""
    response = await client.get(f"/v1/secrets/{name}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def patch(client: httpx.AsyncClient, name: str, **fields: Any) -> dict[str, Any]:
    """Change a secret's metadata, failing the test on any error."""
    response = await client.patch(f"/v1/secrets/{name}", json=fields)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def lead_of(found: dict[str, Any]) -> float:
    """How long before expiry the metadata plans the refresh."""
    expires_at = datetime.fromisoformat(found["expires_at"])
    return seconds(expires_at - datetime.fromisoformat(found["next_refresh_at"]))


async def refreshed_with_refresher(
    client: httpx.AsyncClient, server: TokenServer, callers: Callers
) -> dict[str, Any]:
    """The canonical refresh bound to a `refresher` account, refreshed once (3600 s tokens)."""
    await setup_oauth(client, server)
    await callers.account(*REFRESHER_PERMISSIONS, name="refresher")
    await patch(client, "ACCESS_TOKEN", refresh_as="refresher")
    response = await client.get("/refresh/ACCESS_TOKEN")
    assert response.status_code == 200, response.text
    return await metadata(client, "ACCESS_TOKEN")


class TestNextRefreshAt:
    async def test_planned_after_a_refresh_that_sets_an_expiry(
        self, client: httpx.AsyncClient, token_server: TokenServer, callers: Callers
    ) -> None:
        found = await refreshed_with_refresher(client, token_server, callers)

        assert found["refresh_as"] == "refresher"
        assert found["refresh_before_expiry_seconds"] is None
        # 10 % of 3600 s, plus up to 30 s of jitter.
        assert 360 <= lead_of(found) <= 390, found
        # REFRESH_TOKEN has no expiry (and no refresh_endpoint): nothing to plan.
        assert (await metadata(client, "REFRESH_TOKEN"))["next_refresh_at"] is None

    async def test_moves_when_the_lead_changes(
        self, client: httpx.AsyncClient, token_server: TokenServer, callers: Callers
    ) -> None:
        await refreshed_with_refresher(client, token_server, callers)

        changed = await patch(client, "ACCESS_TOKEN", refresh_before_expiry_seconds=1200)
        assert changed["refresh_before_expiry_seconds"] == 1200
        assert 1200 <= lead_of(changed) <= 1230, changed
        assert lead_of(await metadata(client, "ACCESS_TOKEN")) == lead_of(changed)

        back = await patch(client, "ACCESS_TOKEN", refresh_before_expiry_seconds=None)
        assert back["refresh_before_expiry_seconds"] is None
        assert 360 <= lead_of(back) <= 390, back

    async def test_null_without_refresh_as(
        self, client: httpx.AsyncClient, token_server: TokenServer, callers: Callers
    ) -> None:
        await setup_oauth(client, token_server)
        assert (await client.get("/refresh/ACCESS_TOKEN")).status_code == 200
        found = await metadata(client, "ACCESS_TOKEN")
        assert found["expires_at"] is not None
        assert (found["refresh_as"], found["next_refresh_at"]) == (None, None)

        await callers.account(*REFRESHER_PERMISSIONS, name="refresher")
        assert 360 <= lead_of(await patch(client, "ACCESS_TOKEN", refresh_as="refresher")) <= 390
        assert (await patch(client, "ACCESS_TOKEN", refresh_as=None))["next_refresh_at"] is None

    async def test_unbinding_or_locking_stops_the_plan(
        self, client: httpx.AsyncClient, token_server: TokenServer, callers: Callers
    ) -> None:
        await refreshed_with_refresher(client, token_server, callers)

        assert (await patch(client, "ACCESS_TOKEN", locked=True))["next_refresh_at"] is None
        assert (await patch(client, "ACCESS_TOKEN", locked=False))["next_refresh_at"] is not None
        unbound = await patch(client, "ACCESS_TOKEN", refresh_endpoint=None)
        assert unbound["next_refresh_at"] is None

    async def test_a_value_set_by_hand_is_planned_from_its_own_expiry(
        self, client: httpx.AsyncClient, token_server: TokenServer, callers: Callers
    ) -> None:
        await refreshed_with_refresher(client, token_server, callers)
        expires_at = datetime.now(UTC) + timedelta(hours=10)

        response = await client.put(
            "/v1/secrets/ACCESS_TOKEN/value",
            json={"value": "by-hand", "expires_at": expires_at.isoformat()},
        )
        assert response.status_code == 200, response.text

        found = await metadata(client, "ACCESS_TOKEN")
        assert 3600 <= lead_of(found) <= 3630, found  # 10 % of ten hours, jitter at most 30 s
        no_expiry = await client.put("/v1/secrets/ACCESS_TOKEN/value", json={"value": "forever"})
        assert no_expiry.status_code == 200, no_expiry.text
        assert (await metadata(client, "ACCESS_TOKEN"))["next_refresh_at"] is None

    async def test_replan_follows_the_status(
        self, app: FastAPI, client: httpx.AsyncClient, token_server: TokenServer, callers: Callers
    ) -> None:
        await refreshed_with_refresher(client, token_server, callers)

        async def replan_with(status: str) -> None:
            async with app.state.session_factory() as session, session.begin():
                store = SecretStore(session, app.state.keyring, app.state.settings)
                secret = await store.get("ACCESS_TOKEN")
                secret.status = status
                await store.replan(secret)

        await replan_with("needs_reauth")
        assert (await metadata(client, "ACCESS_TOKEN"))["next_refresh_at"] is None
        await replan_with("ok")
        assert 360 <= lead_of(await metadata(client, "ACCESS_TOKEN")) <= 390


class TestRefreshSettings:
    async def test_unknown_account_is_refused_naming_it(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await setup_oauth(client, token_server)

        response = await client.patch("/v1/secrets/ACCESS_TOKEN", json={"refresh_as": "ghost"})

        error = error_of(response, 422)
        assert "'ghost'" in error["message"]
        assert (await metadata(client, "ACCESS_TOKEN"))["refresh_as"] is None
        created = await client.post("/v1/secrets", json={"name": "OTHER", "refresh_as": "ghost"})
        assert "'ghost'" in error_of(created, 422)["message"]

    async def test_naming_an_account_needs_act_as(
        self, client: httpx.AsyncClient, token_server: TokenServer, callers: Callers
    ) -> None:
        await setup_oauth(client, token_server)
        await callers.account(*REFRESHER_PERMISSIONS, name="refresher")
        manager = await callers.holding("secrets.manage", "act_as:other")

        response = await manager.patch("/v1/secrets/ACCESS_TOKEN", json={"refresh_as": "refresher"})
        assert_refused(response, "act_as:refresher")
        created = await manager.post("/v1/secrets", json={"name": "NEW", "refresh_as": "refresher"})
        assert_refused(created, "act_as:refresher")
        assert (await client.get("/v1/secrets/NEW")).status_code == 404
        assert (await metadata(client, "ACCESS_TOKEN"))["refresh_as"] is None
        # Taking it away needs nothing more than managing secrets.
        cleared = await manager.patch("/v1/secrets/ACCESS_TOKEN", json={"refresh_as": None})
        assert cleared.status_code == 200, cleared.text

    async def test_with_act_as_the_account_is_set(
        self, client: httpx.AsyncClient, token_server: TokenServer, callers: Callers
    ) -> None:
        await setup_oauth(client, token_server)
        await callers.account(*REFRESHER_PERMISSIONS, name="refresher")
        manager = await callers.holding("secrets.manage", "act_as:refresher")

        response = await manager.patch("/v1/secrets/ACCESS_TOKEN", json={"refresh_as": "refresher"})
        assert response.status_code == 200, response.text
        assert response.json()["refresh_as"] == "refresher"
        created = await manager.post(
            "/v1/secrets",
            json={"name": "NEW", "refresh_as": "refresher", "refresh_before_expiry_seconds": 90},
        )
        assert created.status_code == 201, created.text
        body = created.json()
        assert (body["refresh_as"], body["refresh_before_expiry_seconds"]) == ("refresher", 90)

    @pytest.mark.parametrize(
        "fields",
        [
            {"refresh_before_expiry_seconds": 0},
            {"refresh_before_expiry_seconds": 2_592_001},
            {"refresh_before_expiry_seconds": 1.5},
            {"refresh_before_expiry_seconds": "soon"},
            {"refresh_as": "Not An Account"},
            {"refresh_as": ""},
        ],
    )
    async def test_bad_settings_are_refused(
        self, client: httpx.AsyncClient, fields: dict[str, Any]
    ) -> None:
        await create_secret(client, "ACCESS_TOKEN")

        response = await client.patch("/v1/secrets/ACCESS_TOKEN", json=fields)

        error = error_of(response, 422)
        assert error["errors"][0]["path"] == next(iter(fields))

    async def test_the_longest_lead_is_thirty_days(self, client: httpx.AsyncClient) -> None:
        await create_secret(client, "ACCESS_TOKEN")
        found = await patch(client, "ACCESS_TOKEN", refresh_before_expiry_seconds=2_592_000)
        assert found["refresh_before_expiry_seconds"] == 2_592_000
