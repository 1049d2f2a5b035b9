"""Three `tokenfarm scheduler` processes on one PostgreSQL database: 200 schedules fall due in
one window and each runs exactly once, also when one process is killed (-9) mid-window.

Each schedule runs its own endpoint, which calls its own path on a loopback echo server that
answers after 200 ms, so the test counts the upstream calls per schedule as well as the runs.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.config import Settings
from tests.pipeline.conftest import Echo
from tests.pipeline.conftest import echo as echo  # the fixtures, for this module
from tests.pipeline.conftest import echo_server_process as echo_server_process
from tests.processes import kill_hard, replica_env
from tests.schedules.conftest import create_schedule, make_account

SCHEDULES = 200
pytestmark = pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


@contextmanager
def schedulers(env: dict[str, str], count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`tokenfarm scheduler` processes, stopped (or reaped, if a test killed them) at the end."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "app.cli", "scheduler"],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]
    try:
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            process.wait(timeout=20)


async def due_window(client: httpx.AsyncClient, echo: Echo, database_url: str) -> None:
    """200 endpoints and a schedule for each, all due now (the window opened a second ago)."""
    endpoints = []
    for index in range(SCHEDULES):
        echo.state.reply(f"/hit/{index}", delay_seconds=0.2)
        endpoints.append(
            {
                "readable_id": f"hit-{index}",
                "name": f"Hit {index}",
                "action": [
                    {
                        "type": "web_request",
                        "url": echo.url(f"/hit/{index}"),
                        "retry": {"attempts": 1},
                    }
                ],
            }
        )
    response = await client.post(
        "/v1/services", json={"slug": "pings", "name": "Pings", "endpoints": endpoints}
    )
    assert response.status_code == 201, response.text
    await make_account(client, permissions=("services.run:pings",))
    for index in range(SCHEDULES):
        # Once a year: only the window below makes them due during the test.
        await create_schedule(
            client, name=f"s-{index}", service="pings", endpoint=f"hit-{index}", cron="0 0 1 1 *"
        )
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("UPDATE schedule SET next_run_at = now() - interval '1 second'")
    finally:
        await connection.close()


async def settled(database_url: str, timeout: float = 60) -> list[asyncpg.Record]:
    """Wait until every schedule has a last run and no claim; the runs per schedule."""
    connection = await asyncpg.connect(database_url)
    try:
        for _ in range(int(timeout / 0.2)):
            open_ = await connection.fetchval(
                "SELECT count(*) FROM schedule WHERE last_run_id IS NULL OR claimed_by IS NOT NULL"
            )
            if open_ == 0:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"{open_} schedules still open after {timeout} s")
        return list(
            await connection.fetch(
                "SELECT schedule_name, status, error_type FROM run WHERE schedule_name IS NOT NULL"
            )
        )
    finally:
        await connection.close()


async def runs_so_far(database_url: str) -> int:
    """How many ticks have been recorded."""
    connection = await asyncpg.connect(database_url)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM run"))
    finally:
        await connection.close()


def scheduler_env(settings: Settings, database_url: str, tmp_path: Path) -> dict[str, str]:
    """Fast polls, a short deadline and lease (so a dead replica's claims expire in seconds)."""
    return {
        **replica_env(settings, database_url, str(tmp_path)),
        "TOKENFARM_SCHEDULER_POLL_SECONDS": "0.2",
        "TOKENFARM_SCHEDULER_CONCURRENCY": "10",
        "TOKENFARM_RUN_DEADLINE_SECONDS": "3",
        "TOKENFARM_SCHEDULER_LEASE_SECONDS": "4",
    }


class TestThreeReplicas:
    async def test_each_due_schedule_runs_exactly_once(
        self,
        client: httpx.AsyncClient,
        echo: Echo,
        settings: Settings,
        database_url: str,
        tmp_path: Path,
    ) -> None:
        await due_window(client, echo, database_url)

        with schedulers(scheduler_env(settings, database_url, tmp_path), 3):
            runs = await settled(database_url)

        per_schedule = Counter(row["schedule_name"] for row in runs)
        assert len(per_schedule) == SCHEDULES
        assert set(per_schedule.values()) == {1}
        assert {row["status"] for row in runs} == {"succeeded"}
        hits = Counter(request.path for request in echo.state.requests)
        assert hits == {f"/hit/{index}": 1 for index in range(SCHEDULES)}

    async def test_a_killed_replica_is_taken_over_and_nothing_runs_twice(
        self,
        client: httpx.AsyncClient,
        echo: Echo,
        settings: Settings,
        database_url: str,
        tmp_path: Path,
    ) -> None:
        await due_window(client, echo, database_url)

        with schedulers(scheduler_env(settings, database_url, tmp_path), 3) as processes:
            for _ in range(300):
                if await runs_so_far(database_url) >= SCHEDULES // 4:
                    break
                await asyncio.sleep(0.05)
            kill_hard(processes[0])  # mid-window, with claims in flight
            runs = await settled(database_url)

        per_schedule = Counter(row["schedule_name"] for row in runs)
        assert len(per_schedule) == SCHEDULES
        assert set(per_schedule.values()) == {1}, "a tick ran twice or not at all"
        hits = Counter(request.path for request in echo.state.requests)
        assert max(hits.values()) == 1, "an upstream was called twice for one tick"
        outcomes = Counter((row["status"], row["error_type"]) for row in runs)
        assert set(outcomes) <= {("succeeded", None), ("failed", "interrupted")}
        for row in runs:
            index = row["schedule_name"].removeprefix("s-")
            if row["status"] == "succeeded":
                assert hits[f"/hit/{index}"] == 1
