"""`tokenfarm connect NAME --device` against a real `tokenfarm serve`: it prints the code, a
person enters it, the command waits with its spinner and exits 0 once the secret is connected."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import TokenServer, sqlite_database
from tests.connect.device_setup import SECRET, connected_secret_at, person_decides
from tests.processes import run_cli, serving


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLite only (see SQLITE_ONLY_REASON in tests/conftest.py): the device grant itself runs
    on both in tests/connect."""
    return sqlite_database(request, tmp_path)


def _read_until_code(process: subprocess.Popen[str]) -> dict[str, str]:
    """The printed verification URI and user code."""
    assert process.stdout is not None
    found: dict[str, str] = {}
    deadline = time.monotonic() + 30
    while "user_code" not in found:
        assert time.monotonic() < deadline, found
        line = process.stdout.readline()
        assert line, "tokenfarm connect ended before printing the code"
        if line.startswith("To connect"):
            found["verification_uri"] = line.rsplit(" ", 1)[1].strip()
        if "enter the code:" in line:
            found["user_code"] = line.rsplit(" ", 1)[1].strip()
    return found


@pytest.mark.parametrize("button", ["Allow", "Deny"])
async def test_connect_device_waits_until_connected_or_refused(
    app: FastAPI,
    client: httpx.AsyncClient,
    token_server: TokenServer,
    cli_env: dict[str, str],
    button: str,
) -> None:
    await connected_secret_at(client, app, token_server)
    # The owner's login token of `client` works at the replica: same database, same JWT secret.
    token = client.headers["Authorization"].removeprefix("Bearer ")
    with serving(cli_env) as base:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "connect", SECRET, "--device"],
            env={**os.environ, **cli_env, "TOKENFARM_ADDR": base, "TOKENFARM_TOKEN": token},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            shown = await asyncio.to_thread(_read_until_code, process)
            await person_decides(shown, button)
            out, err = await asyncio.to_thread(process.communicate, timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    if button == "Allow":
        assert process.returncode == 0, err
        assert f"connected: {SECRET}" in out
        assert token_server.state.is_active(
            (await client.get(f"/v1/secrets/{SECRET}/value")).json()["value"]
        )
    else:
        assert process.returncode == 1
        assert "denied" in err and "declined" in err
    (device_code,) = token_server.state.device_codes
    assert device_code not in out + err


def test_connect_without_a_token_says_what_to_set(offline_env: dict[str, str]) -> None:
    result = run_cli("connect", "X", "--device", env={**offline_env, "TOKENFARM_TOKEN": ""})
    assert result.returncode == 2
    assert "TOKENFARM_TOKEN" in result.stderr


def test_connect_to_nothing_says_where_it_tried(offline_env: dict[str, str]) -> None:
    env = {**offline_env, "TOKENFARM_TOKEN": "tfk_x", "TOKENFARM_ADDR": "http://127.0.0.1:9"}
    result = run_cli("connect", "X", "--device", env=env)
    assert result.returncode == 1
    assert "http://127.0.0.1:9" in result.stderr and "TOKENFARM_ADDR" in result.stderr
