"""A `tokenfarm scheduler` process delivers the webhooks of the runs it makes."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import httpx
from fastapi import FastAPI
from sqlalchemy import update

from app.config import Settings
from app.db import utcnow
from app.schedules.models import Schedule
from tests.conftest import TokenServer, setup_oauth
from tests.notifications.conftest import Receiver, create_webhook, wait_for
from tests.processes import replica_env
from tests.schedules.conftest import create_schedule, make_account


class TestSchedulerProcess:
    async def test_a_failing_tick_is_notified_once_by_the_process_that_ran_it(
        self,
        client: httpx.AsyncClient,
        app: FastAPI,
        token_server: TokenServer,
        receiver: Receiver,
        settings: Settings,
        database_url: str,
        tmp_path: Path,
    ) -> None:
        await setup_oauth(client, token_server)
        await make_account(client)
        await create_schedule(client, name="tick", service="oauth", endpoint="refresh-token")
        signing_secret = await create_webhook(client, "ops", f"{receiver.url}/hook")
        async with app.state.session_factory() as session, session.begin():
            due = utcnow() - timedelta(seconds=1)
            await session.execute(update(Schedule).values(next_run_at=due))
        token_server.state.fault = "http_500"
        env = {
            **replica_env(settings, database_url, str(tmp_path)),
            "TOKENFARM_SCHEDULER_POLL_SECONDS": "0.2",
        }

        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "scheduler"],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await wait_for(lambda: len(receiver.all()) >= 2, timeout_seconds=30)
        finally:
            process.terminate()
            process.wait(timeout=20)

        deliveries = receiver.all()
        assert sorted(d.json()["secret"] for d in deliveries) == ["ACCESS_TOKEN", "REFRESH_TOKEN"]
        assert {d.event for d in deliveries} == {"secret.failing"}
        assert all(d.verifies(signing_secret) for d in deliveries)
        schedule = (await client.get("/v1/schedules/tick")).json()
        assert schedule["last_status"] == "failed"
        assert {d.json()["run_id"] for d in deliveries} == {schedule["last_run_id"]}
        # The app in this process ran nothing, so it sent nothing.
        assert await app.state.notifier.idle(1)
        assert len(receiver.all()) == 2
