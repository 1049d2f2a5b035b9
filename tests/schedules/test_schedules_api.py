"""The schedules API: validation that says what is wrong, the next tick, and the runs route."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest

from tests.auth.conftest import Callers
from tests.auth.conftest import callers as callers  # the fixture, for this module
from tests.conftest import TokenServer, setup_oauth
from tests.schedules.conftest import RUN_AS, create_schedule, make_account


@pytest.fixture
async def ready(client: httpx.AsyncClient, token_server: TokenServer) -> None:
    """The canonical refresh service and the account schedules run as."""
    await setup_oauth(client, token_server)
    await make_account(client)


def base(**fields: object) -> dict[str, object]:
    """A valid schedule body with some fields replaced."""
    return {
        "name": "hourly",
        "service": "oauth",
        "endpoint": "refresh-token",
        "cron": "0 * * * *",
        "timezone": "UTC",
        "run_as": RUN_AS,
        **fields,
    }


class TestCreate:
    async def test_created_with_its_next_tick(self, client: httpx.AsyncClient, ready: None) -> None:
        created = await create_schedule(client, **base(cron="0 9 * * 1", timezone="Europe/Berlin"))

        next_run = datetime.fromisoformat(created["next_run_at"])
        local = next_run.astimezone(ZoneInfo("Europe/Berlin"))
        assert (local.weekday(), local.hour, local.minute) == (0, 9, 0)  # Monday 09:00 there
        assert datetime.now(UTC) < next_run <= datetime.now(UTC) + timedelta(days=7)
        assert created["enabled"] is True
        assert created["last_run_at"] is None
        assert created["running"] is False
        assert created["created_by"] == "user:owner@example.com"
        listed = (await client.get("/v1/schedules")).json()
        assert [s["name"] for s in listed] == ["hourly"]

    @pytest.mark.parametrize(
        ("fields", "fragment"),
        [
            ({"cron": "61 * * * *"}, "cron: '61 * * * *' is not valid"),
            ({"cron": "* * * *"}, "has 4 fields"),
            ({"cron": "* * * * * *"}, "has 6 fields"),
            ({"cron": "every hour"}, "has 2 fields"),
            ({"timezone": "Mars/Olympus"}, "timezone: unknown time zone 'Mars/Olympus'"),
            ({"run_as": "nobody"}, "run_as: no service account 'nobody'"),
            ({"service": "missing"}, "service 'missing'"),
            ({"endpoint": "missing"}, "no endpoint 'missing'"),
        ],
    )
    async def test_invalid_fields_are_422_saying_which(
        self, client: httpx.AsyncClient, ready: None, fields: dict[str, str], fragment: str
    ) -> None:
        response = await client.post("/v1/schedules", json=base(**fields))

        assert response.status_code == 422, response.text
        assert fragment in response.json()["error"]["message"]
        assert (await client.get("/v1/schedules")).json() == []

    @pytest.mark.parametrize(
        "fields",
        [{"name": "Bad Name"}, {"environments": ["moon"]}, {"environments": []}, {"extra": 1}],
    )
    async def test_malformed_bodies_are_422(
        self, client: httpx.AsyncClient, ready: None, fields: dict[str, object]
    ) -> None:
        response = await client.post("/v1/schedules", json=base(**fields))
        assert response.status_code == 422, response.text

    async def test_duplicate_name_is_409(self, client: httpx.AsyncClient, ready: None) -> None:
        await create_schedule(client, **base())
        response = await client.post("/v1/schedules", json=base())
        assert response.status_code == 409, response.text

    async def test_creator_needs_act_as_the_account(
        self, client: httpx.AsyncClient, ready: None, callers: Callers
    ) -> None:
        manager = await callers.holding("schedules.manage")
        response = await manager.post("/v1/schedules", json=base())
        assert response.status_code == 403, response.text
        assert response.json()["error"]["permission"] == f"act_as:{RUN_AS}"

        allowed = await callers.holding("schedules.manage", f"act_as:{RUN_AS}")
        response = await allowed.post("/v1/schedules", json=base())
        assert response.status_code == 201, response.text


class TestChange:
    async def test_disabling_clears_the_next_tick_and_enabling_plans_it(
        self, client: httpx.AsyncClient, ready: None
    ) -> None:
        await create_schedule(client, **base())

        off = await client.patch("/v1/schedules/hourly", json={"enabled": False})
        assert off.status_code == 200, off.text
        assert off.json()["next_run_at"] is None
        on = await client.patch("/v1/schedules/hourly", json={"enabled": True})
        assert datetime.fromisoformat(on.json()["next_run_at"]).minute == 0

    async def test_new_cron_replans(self, client: httpx.AsyncClient, ready: None) -> None:
        await create_schedule(client, **base())
        response = await client.patch("/v1/schedules/hourly", json={"cron": "30 2 * * *"})
        assert response.status_code == 200, response.text
        next_run = datetime.fromisoformat(response.json()["next_run_at"])
        assert (next_run.hour, next_run.minute) == (2, 30)

    async def test_invalid_change_is_refused_and_nothing_changes(
        self, client: httpx.AsyncClient, ready: None
    ) -> None:
        created = await create_schedule(client, **base())
        response = await client.patch("/v1/schedules/hourly", json={"cron": "0 25 * * *"})
        assert response.status_code == 422, response.text
        assert (await client.get("/v1/schedules/hourly")).json() == created

    async def test_changing_run_as_needs_act_as_for_the_new_account(
        self, client: httpx.AsyncClient, ready: None, callers: Callers
    ) -> None:
        await create_schedule(client, **base())
        await make_account(client, "other-bot")
        manager = await callers.holding("schedules.manage", f"act_as:{RUN_AS}")

        response = await manager.patch("/v1/schedules/hourly", json={"run_as": "other-bot"})
        assert response.status_code == 403, response.text
        response = await manager.patch("/v1/schedules/hourly", json={"description": "nightly"})
        assert response.status_code == 200, response.text

    async def test_delete(self, client: httpx.AsyncClient, ready: None) -> None:
        await create_schedule(client, **base())
        assert (await client.delete("/v1/schedules/hourly")).status_code == 204
        assert (await client.get("/v1/schedules/hourly")).status_code == 404
        assert (await client.delete("/v1/schedules/hourly")).status_code == 404

    async def test_runs_of_an_unknown_schedule_are_404(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/v1/schedules/nope/runs")
        assert response.status_code == 404, response.text
