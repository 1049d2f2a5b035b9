"""The scheduler in one process, on a clock the test moves: ticks, downtime, takeover, expiry."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import update

from app.clock import ManualClock, SystemClock
from app.config import Settings
from app.events import SecretStatusChanged
from app.schedules.models import Schedule
from app.schedules.scheduler import Scheduler
from tests.conftest import TokenServer, secret_value, setup_oauth
from tests.schedules.conftest import RUN_AS, create_schedule, make_account


async def schedule_state(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    """A schedule as the API shows it."""
    response = await client.get(f"/v1/schedules/{name}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def runs_of(client: httpx.AsyncClient, name: str) -> list[dict[str, Any]]:
    """The runs of a schedule, newest first."""
    response = await client.get(f"/v1/schedules/{name}/runs")
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


async def refresh_schedule(
    client: httpx.AsyncClient, server: TokenServer, **fields: Any
) -> dict[str, Any]:
    """The canonical refresh, its account, and a schedule running it every minute."""
    await setup_oauth(client, server, enable_log=False)
    await make_account(client)
    return await create_schedule(
        client, name="every-minute", service="oauth", endpoint="refresh-token", **fields
    )


async def refreshed_as_account(
    client: httpx.AsyncClient, server: TokenServer, permissions: tuple[str, ...] | None = None
) -> None:
    """The canonical refresh, refreshed once, with ACCESS_TOKEN refreshed as RUN_AS on expiry."""
    await setup_oauth(client, server)
    await make_account(client, permissions=permissions)
    response = await client.patch("/v1/secrets/ACCESS_TOKEN", json={"refresh_as": RUN_AS})
    assert response.status_code == 200, response.text
    assert (await client.get("/refresh/ACCESS_TOKEN")).status_code == 200


def status_changes(app: FastAPI) -> list[SecretStatusChanged]:
    """The secrets' status changes the app announces from now on."""
    heard: list[SecretStatusChanged] = []
    app.state.events.subscribe(
        lambda event: heard.append(event) if isinstance(event, SecretStatusChanged) else None
    )
    return heard


class TestTicks:
    async def test_nothing_runs_before_the_tick(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        scheduler: Scheduler,
    ) -> None:
        await refresh_schedule(client, token_server)

        assert await scheduler.run_due() == 0
        assert token_server.state.token_requests == 0

    async def test_a_due_tick_runs_as_the_account_and_is_logged(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        scheduler: Scheduler,
        clock: ManualClock,
    ) -> None:
        created = await refresh_schedule(client, token_server)
        await clock.advance(61)

        assert await scheduler.run_due() == 1

        assert token_server.state.token_requests == 1
        assert token_server.state.is_active(await secret_value(client, "ACCESS_TOKEN"))
        # Logged although the endpoint doesn't log its runs: every tick is.
        [run] = await runs_of(client, "every-minute")
        assert (run["trigger"], run["schedule"], run["status"]) == (
            "schedule",
            "every-minute",
            "succeeded",
        )
        assert run["actor"] == f"service_account:{RUN_AS}"
        state = await schedule_state(client, "every-minute")
        assert state["last_status"] == "succeeded"
        assert state["last_run_id"] == run["id"]
        assert state["last_run_at"] == created["next_run_at"]
        assert state["next_run_at"] > created["next_run_at"]
        assert state["running"] is False
        assert await scheduler.run_due() == 0  # the same tick never runs twice

    async def test_missed_ticks_run_once_after_downtime(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        scheduler: Scheduler,
        clock: ManualClock,
    ) -> None:
        await refresh_schedule(client, token_server)
        await clock.advance(5 * 60 + 30)  # five ticks went by while nothing ran

        assert await scheduler.run_due() == 1

        assert token_server.state.token_requests == 1
        assert len(await runs_of(client, "every-minute")) == 1
        next_run = (await schedule_state(client, "every-minute"))["next_run_at"]
        assert next_run > clock.now().isoformat()

    async def test_disabled_and_foreign_environment_schedules_do_not_run(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        scheduler: Scheduler,
        clock: ManualClock,
    ) -> None:
        await refresh_schedule(client, token_server, environments=["production"])
        await create_schedule(
            client, name="off", service="oauth", endpoint="refresh-token", enabled=False
        )
        await clock.advance(120)

        assert await scheduler.run_due() == 0  # the app runs in `test`
        assert token_server.state.token_requests == 0

    async def test_a_failed_tick_is_logged_with_its_error(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        scheduler: Scheduler,
        clock: ManualClock,
    ) -> None:
        await refresh_schedule(client, token_server)
        token_server.state.fault = "invalid_client"
        await clock.advance(61)

        await scheduler.run_due()

        [run] = await runs_of(client, "every-minute")
        assert (run["status"], run["error_type"]) == ("failed", "upstream_error")
        assert (await schedule_state(client, "every-minute"))["last_status"] == "failed"

    async def test_a_deleted_account_fails_the_tick_without_running(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        scheduler: Scheduler,
        clock: ManualClock,
    ) -> None:
        await refresh_schedule(client, token_server)
        assert (await client.delete(f"/v1/service-accounts/{RUN_AS}")).status_code == 204
        await clock.advance(61)

        await scheduler.run_due()

        assert token_server.state.token_requests == 0
        [run] = await runs_of(client, "every-minute")
        assert run["status"] == "failed"
        assert "no longer exists" in run["error_message"]


class TestPermissions:
    async def test_run_as_needs_services_run(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        scheduler: Scheduler,
        clock: ManualClock,
    ) -> None:
        await setup_oauth(client, token_server)
        await make_account(client, permissions=("secrets.update_from_service:*",))
        await create_schedule(
            client, name="every-minute", service="oauth", endpoint="refresh-token"
        )
        await clock.advance(61)

        await scheduler.run_due()

        assert token_server.state.token_requests == 0
        [run] = await runs_of(client, "every-minute")
        assert run["status"] == "failed"
        assert "lacks 'services.run:oauth'" in run["error_message"]

    async def test_refresh_as_needs_services_run(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        scheduler: Scheduler,
        clock: ManualClock,
    ) -> None:
        await refreshed_as_account(
            client, token_server, permissions=("secrets.update_from_service:*",)
        )
        token_server.state.reset_counters()
        await clock.advance(3600)

        assert await scheduler.run_due() == 1

        assert token_server.state.token_requests == 0
        found = (await client.get("/v1/secrets/ACCESS_TOKEN")).json()
        assert found["status"] == "failing"
        assert "lacks 'services.run:oauth'" in found["last_error"]
        assert found["next_refresh_at"] > clock.now().isoformat()  # backed off

    async def test_a_refused_refresh_is_announced(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        scheduler: Scheduler,
        clock: ManualClock,
    ) -> None:
        """Webhooks and metrics hear of a refresh refused for its refresh_as, like any failure."""
        await refreshed_as_account(
            client, token_server, permissions=("secrets.update_from_service:*",)
        )
        heard = status_changes(app)
        await clock.advance(3600)

        assert await scheduler.run_due() == 1

        [change] = heard
        assert (change.secret, change.old_status, change.new_status) == (
            "ACCESS_TOKEN",
            "ok",
            "failing",
        )
        assert change.failure_count == 1
        assert change.last_error is not None and "lacks 'services.run:oauth'" in change.last_error
        found = (await client.get("/v1/secrets/ACCESS_TOKEN")).json()
        assert (found["status"], found["last_error"]) == ("failing", change.last_error)

    async def test_a_refresh_refused_for_a_deleted_account_is_announced(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        scheduler: Scheduler,
        clock: ManualClock,
    ) -> None:
        await refreshed_as_account(client, token_server)
        assert (await client.delete(f"/v1/service-accounts/{RUN_AS}")).status_code == 204
        heard = status_changes(app)
        token_server.state.reset_counters()
        await clock.advance(3600)

        assert await scheduler.run_due() == 1

        assert token_server.state.token_requests == 0
        assert [(c.secret, c.old_status, c.new_status) for c in heard] == [
            ("ACCESS_TOKEN", "ok", "failing")
        ]
        assert heard[0].last_error is not None and "refresh_as" in heard[0].last_error


class TestReplicas:
    async def test_two_schedulers_claim_each_tick_once(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        settings: Settings,
        clock: ManualClock,
    ) -> None:
        await setup_oauth(client, token_server, enable_log=False)
        await make_account(client)
        for index in range(6):
            await create_schedule(
                client, name=f"tick-{index}", service="oauth", endpoint="refresh-token"
            )
        token_server.state.latency_seconds = 0.05
        await clock.advance(61)
        schedulers = [
            Scheduler(app.state.session_factory, app.state.runner, settings, clock, name=name)
            for name in ("replica-a", "replica-b")
        ]

        counts = await asyncio.gather(*(s.run_due() for s in schedulers))

        assert sum(counts) == 6
        for index in range(6):
            assert len(await runs_of(client, f"tick-{index}")) == 1
        # Six ticks of one endpoint take turns: each rotates the token once more.
        assert token_server.state.token_requests == 6
        assert [r["error"] for r in token_server.state.requests] == [None] * 6

    async def test_an_abandoned_claim_is_taken_over_after_the_lease(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        settings: Settings,
        clock: ManualClock,
        scheduler: Scheduler,
    ) -> None:
        await refresh_schedule(client, token_server)
        await clock.advance(61)
        gone = Scheduler(app.state.session_factory, app.state.runner, settings, clock, name="gone")
        # The other replica claims the tick and dies before starting it.
        [job] = await gone._claim_schedules(clock.now(), 5)

        assert await scheduler.run_due() == 0  # its lease still holds
        await clock.advance(settings.lease_seconds + 1)
        # The abandoned tick, then the tick that is due by now.
        assert await scheduler.run_due() == 2

        runs = await runs_of(client, "every-minute")
        assert [run["status"] for run in runs] == ["succeeded", "succeeded"]
        assert job.run_id in [run["id"] for run in runs]
        assert token_server.state.token_requests == 2

    async def test_a_started_tick_of_a_dead_replica_is_recorded_not_rerun(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        settings: Settings,
        clock: ManualClock,
        scheduler: Scheduler,
    ) -> None:
        await refresh_schedule(client, token_server)
        await clock.advance(61)
        gone = Scheduler(app.state.session_factory, app.state.runner, settings, clock, name="gone")
        [job] = await gone._claim_schedules(clock.now(), 5)
        async with app.state.session_factory() as session, session.begin():
            # What the replica writes just before it calls the endpoint.
            await session.execute(
                update(Schedule)
                .where(Schedule.id == job.schedule_id)  # type: ignore[arg-type]
                .values(run_started_at=clock.now())
            )
        await clock.advance(settings.lease_seconds + 1)

        assert await scheduler.run_due() == 0

        assert token_server.state.token_requests == 0
        [run] = await runs_of(client, "every-minute")
        assert (run["id"], run["status"], run["error_type"]) == (
            job.run_id,
            "failed",
            "interrupted",
        )
        state = await schedule_state(client, "every-minute")
        assert (state["last_status"], state["running"]) == ("interrupted", False)


class TestExpiryDrivenRefresh:
    async def test_a_secret_that_expires_in_20_s_is_refreshed_before_it_expires(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        settings: Settings,
    ) -> None:
        token_server.state.expires_in = 20
        await setup_oauth(client, token_server)
        await make_account(client)
        response = await client.patch(
            "/v1/secrets/ACCESS_TOKEN",
            json={"refresh_as": RUN_AS, "refresh_before_expiry_seconds": 17},
        )
        assert response.status_code == 200, response.text
        first = await client.get("/refresh/ACCESS_TOKEN")
        assert first.status_code == 200, first.text
        expires_at = first.json()["expires_at"]
        planned = (await client.get("/v1/secrets/ACCESS_TOKEN")).json()["next_refresh_at"]
        assert planned < expires_at
        fast = settings.model_copy(update={"scheduler_poll_seconds": 0.2})
        scheduler = Scheduler(app.state.session_factory, app.state.runner, fast, SystemClock())
        stop = asyncio.Event()
        task = asyncio.ensure_future(scheduler.serve(stop))
        try:
            for _ in range(100):  # up to 20 s
                found = (await client.get("/v1/secrets/ACCESS_TOKEN")).json()
                if found["version"] == 2:
                    break
                await asyncio.sleep(0.2)
        finally:
            stop.set()
            await task

        assert found["version"] == 2, found
        assert found["last_refreshed_at"] < expires_at
        assert found["next_refresh_at"] > planned
        [run] = (await client.get("/v1/runs", params={"trigger": "expiry"})).json()
        assert (run["status"], run["actor"]) == ("succeeded", f"service_account:{RUN_AS}")
        assert token_server.state.token_requests == 2

    async def test_failing_backs_off_and_needs_reauth_stops(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        scheduler: Scheduler,
        clock: ManualClock,
    ) -> None:
        await refreshed_as_account(client, token_server)
        token_server.state.reset_counters()
        token_server.state.fault = "invalid_client"
        await clock.advance(3600)  # past the token's expiry: due

        assert await scheduler.run_due() == 1
        assert token_server.state.token_requests == 1
        found = (await client.get("/v1/secrets/ACCESS_TOKEN")).json()
        assert found["status"] == "failing"
        backoff = found["next_refresh_at"]
        assert backoff > clock.now().isoformat()
        assert await scheduler.run_due() == 0  # not hit again at once

        token_server.state.fault = "invalid_grant"
        await clock.advance(3600)
        assert await scheduler.run_due() == 1
        found = (await client.get("/v1/secrets/ACCESS_TOKEN")).json()
        assert (found["status"], found["next_refresh_at"]) == ("needs_reauth", None)
        await clock.advance(3600)
        assert await scheduler.run_due() == 0
        assert token_server.state.token_requests == 2
