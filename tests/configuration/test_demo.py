"""The demo is config as code: examples/demo.yaml applied against the bundled token server gives
a refresh that works, a schedule that rotates the tokens, and a restart that changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from fastapi import FastAPI

from app.clock import ManualClock
from app.config import Settings
from app.configuration.loader import load
from app.demo.seed import DEMO_DOCUMENT, DemoSetup, demo_document, seed_demo
from app.schedules.scheduler import Scheduler
from tests.configuration.conftest import changed
from tests.conftest import TokenServer
from tests.processes import free_port

DEMO_CLIENT = ("demo-client", "demo-client-secret")


async def seed(app: FastAPI, server: TokenServer) -> tuple[DemoSetup, str]:
    """Seed the demo as `tokenfarm demo` does at start; answers the setup and the seed token."""
    server.state.add_client(*DEMO_CLIENT)
    refresh_token = server.state.issue_refresh_token(DEMO_CLIENT[0])
    async with app.state.session_factory() as session, session.begin():
        setup = await seed_demo(
            session,
            app.state.keyring,
            app.state.settings,
            token_server_url=server.url,
            client_id=DEMO_CLIENT[0],
            client_secret=DEMO_CLIENT[1],
            refresh_token=refresh_token,
        )
    return setup, refresh_token


def keyed(app: FastAPI, key: str) -> httpx.AsyncClient:
    """A client of the app with the demo's API key."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://tokenfarm.test",
        headers={"Authorization": f"Bearer {key}"},
    )


class TestDemoDocument:
    def test_the_example_is_a_valid_document_pointing_at_the_bundled_server(self) -> None:
        loaded = load(demo_document("http://127.0.0.1:9999"), str(DEMO_DOCUMENT))
        [service] = loaded.document.services or []
        assert service.endpoints[0].action[1].url == "http://127.0.0.1:9999/oauth/token"

    async def test_seeding_gives_a_key_that_refreshes_and_reads(
        self, app: FastAPI, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        setup, _ = await seed(app, token_server)
        assert setup.plan.count("create") == 10
        async with keyed(app, setup.key) as demo:
            refreshed = await demo.get("/refresh/ACCESS_TOKEN")
            assert refreshed.status_code == 200, refreshed.text
            value = (await demo.get("/v1/secrets/ACCESS_TOKEN/value")).json()
            assert token_server.state.is_active(value["value"])
            assert (await demo.get("/v1/secrets/REFRESH_TOKEN")).json()["version"] == 2
            assert (await demo.get("/v1/runs?limit=5")).status_code == 200
        schedule = (await client.get("/v1/schedules/rotate-every-minute")).json()
        assert (schedule["service"], schedule["endpoint"]) == ("oauth", "refresh-token")

    async def test_a_restart_changes_nothing_but_the_new_grant_and_key(
        self, app: FastAPI, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        first, _ = await seed(app, token_server)
        again, new_token = await seed(app, token_server)
        assert changed(again.plan) == []
        assert again.key != first.key
        value = (await client.get("/v1/secrets/REFRESH_TOKEN/value")).json()
        assert (value["value"], value["version"]) == (new_token, 2)
        async with keyed(app, first.key) as old:
            assert (await old.get("/v1/secrets/ACCESS_TOKEN")).status_code == 401
        async with keyed(app, again.key) as demo:
            assert (await demo.get("/refresh/ACCESS_TOKEN")).status_code == 200

    async def test_the_schedule_rotates_the_tokens_on_its_own(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        settings: Settings,
    ) -> None:
        await seed(app, token_server)
        clock = ManualClock(datetime.now(UTC))
        scheduler = Scheduler(
            app.state.session_factory, app.state.runner, settings, clock, name="demo-test"
        )
        versions = []
        for _ in range(2):
            await clock.advance(61)
            assert await scheduler.run_due() >= 1
            versions.append((await client.get("/v1/secrets/REFRESH_TOKEN")).json()["version"])
        assert versions == [2, 3]
        runs = (await client.get("/v1/schedules/rotate-every-minute/runs")).json()
        assert [run["status"] for run in runs] == ["succeeded", "succeeded"]


def test_tokenfarm_demo_starts_and_refreshes(tmp_path: Path) -> None:
    """`tokenfarm demo` as a newcomer runs it: it prints a key, and the key refreshes."""
    port, token_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("TOKENFARM_")}
    env.update(TOKENFARM_DATA_DIR=str(tmp_path), PYTHONUNBUFFERED="1")
    ports = ["--port", str(port), "--token-server-port", str(token_port)]
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "demo", *ports],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        printed = []
        deadline = time.monotonic() + 60
        while not any(line.startswith("  export TF_KEY=") for line in printed):
            assert time.monotonic() < deadline, printed
            line = process.stdout.readline()
            assert line or process.poll() is None, printed
            printed.append(line)
        output = "".join(printed)
        assert "owner login:    owner@example.com / tokenfarm-demo-password" in output
        assert f"console:        http://127.0.0.1:{port}/  (log in as the owner below)" in output
        assert "examples/demo.yaml applied (10 created" in output
        key = next(line for line in printed if "export TF_KEY=" in line).split("=", 1)[1].strip()
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {key}"}
        while True:
            try:
                response = httpx.get(f"{base}/refresh/ACCESS_TOKEN", headers=headers, timeout=10)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.2)
        assert response.status_code == 200, response.text
        metadata = httpx.get(f"{base}/v1/secrets/REFRESH_TOKEN", headers=headers, timeout=5)
        assert metadata.json()["version"] >= 2  # the schedule may have rotated it too
        # The printed login opens the console.
        with httpx.Client(base_url=base, timeout=10) as console:
            login = {"email": "owner@example.com", "password": "tokenfarm-demo-password"}
            assert console.post("/console/login", data=login).status_code == 303
            page = console.get("/console/secrets")
            assert page.status_code == 200
            assert 'data-secret="ACCESS_TOKEN"' in page.text
    finally:
        process.terminate()
        process.wait(timeout=20)
        if process.stdout is not None:
            process.stdout.close()
