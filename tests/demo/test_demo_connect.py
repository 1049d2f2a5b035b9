"""`tokenfarm demo` shows Connect end to end: a newcomer opens the printed link, clicks Allow at
the bundled token server's consent page, and sees DEMO_CONNECTED connected and refreshing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.demo.browser import press
from tests.processes import free_port

OWNER = ("owner@example.com", "tokenfarm-demo-password")


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A `tokenfarm demo` process as `make run` starts it: its base URL and what it printed."""
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
    base = f"http://127.0.0.1:{port}"
    try:
        assert process.stdout is not None
        printed: list[str] = []
        deadline = time.monotonic() + 60
        while not any("tokenfarm connect DEMO_CONNECTED --device" in line for line in printed):
            assert time.monotonic() < deadline, printed
            line = process.stdout.readline()
            assert line or process.poll() is None, printed
            printed.append(line)
        while True:
            try:
                httpx.get(f"{base}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.2)
        yield base, printed
    finally:
        process.terminate()
        process.wait(timeout=20)
        if process.stdout is not None:
            process.stdout.close()


def test_open_the_link_click_allow_and_the_secret_is_connected_and_refreshing(
    demo: tuple[str, list[str]],
) -> None:
    base, printed = demo
    link = next(line for line in printed if "/connect/link?" in line).split("open ", 1)[1].strip()
    assert link.startswith(f"{base}/connect/link?token=")
    with httpx.Client(timeout=10) as browser:
        to_provider = browser.get(link)
        assert to_provider.status_code == 302, to_provider.text
        consent = browser.get(to_provider.headers["location"])
        assert consent.status_code == 200
        assert "demo-client" in consent.text
        back = press(browser, consent, "Allow")
        assert back.status_code == 303
        assert back.headers["location"].startswith(f"{base}/connect/callback?")
        connected = browser.get(back.headers["location"])
        assert connected.status_code == 200, connected.text
        assert "DEMO_CONNECTED" in connected.text
    with httpx.Client(base_url=base, timeout=10) as api:
        login = api.post("/auth/token", data={"username": OWNER[0], "password": OWNER[1]})
        api.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
        metadata = api.get("/v1/secrets/DEMO_CONNECTED").json()
        assert metadata["status"] == "ok"
        assert metadata["connected_by"]
        first = api.get("/v1/secrets/DEMO_CONNECTED/value").json()
        refreshed = api.get("/refresh/DEMO_CONNECTED")
        assert refreshed.status_code == 200, refreshed.text
        second = api.get("/v1/secrets/DEMO_CONNECTED/value").json()
        assert second["version"] > first["version"]
        assert second["value"] != first["value"]
        # The same link can't connect twice.
        with httpx.Client(timeout=10) as browser:
            assert browser.get(link).status_code == 400
