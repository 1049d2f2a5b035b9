"""Fixtures of the scheduler tests: a service account to run as, and a scheduler of the app."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.clock import ManualClock
from app.config import Settings
from app.schedules.scheduler import Scheduler

RUN_AS = "scheduler-bot"


async def make_account(
    client: httpx.AsyncClient, name: str = RUN_AS, permissions: tuple[str, ...] | None = None
) -> str:
    """A service account whose role may run every service and write every secret."""
    granted = list(
        permissions or ("services.run:*", "secrets.update_from_service:*", "secrets.read:*")
    )
    response = await client.post("/v1/roles", json={"name": f"{name}-role", "permissions": granted})
    assert response.status_code == 201, response.text
    response = await client.post(
        "/v1/service-accounts", json={"name": name, "roles": [f"{name}-role"]}
    )
    assert response.status_code == 201, response.text
    return name


async def create_schedule(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    """A schedule through the API (defaults: every minute, UTC, as RUN_AS)."""
    body = {"cron": "* * * * *", "timezone": "UTC", "run_as": RUN_AS, **fields}
    response = await client.post("/v1/schedules", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


@pytest.fixture
def clock() -> ManualClock:
    """A clock that moves only when the test says so; it starts at the real now."""
    return ManualClock(datetime.now(UTC))


@pytest.fixture
def scheduler(app: FastAPI, settings: Settings, clock: ManualClock) -> Scheduler:
    """A scheduler on the app's database and runner, driven by `clock`."""
    return Scheduler(app.state.session_factory, app.state.runner, settings, clock, name="test-a")
