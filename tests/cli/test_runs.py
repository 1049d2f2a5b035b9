"""`tokenfarm runs [--follow]`: the run log as a table, filtered, and followed as runs happen."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.cli.runner import invoke
from tests.conftest import TokenServer, setup_oauth, sqlite_database


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLite only (see SQLITE_ONLY_REASON in tests/conftest.py)."""
    return sqlite_database(request, tmp_path)


async def refresh(client: httpx.AsyncClient) -> dict[str, object]:
    """One refresh through the API; its answer."""
    response = await client.get("/refresh/ACCESS_TOKEN")
    body: dict[str, object] = response.json()
    return body


class TestRuns:
    async def test_lists_runs_newest_last_and_filters_them(
        self, client: httpx.AsyncClient, token_server: TokenServer, cli_env: dict[str, str]
    ) -> None:
        await setup_oauth(client, token_server)
        ok = await refresh(client)
        token_server.state.fault = "invalid_client"
        failed = await refresh(client)
        assert (ok["status"], failed["status"]) == ("succeeded", "failed")

        listed = invoke("runs", env=cli_env)

        assert listed.returncode == 0, listed.stderr
        header, *rows = [line for line in listed.stdout.splitlines() if line.strip()]
        assert header.split()[:3] == ["started", "status", "trigger"]
        assert [row.split()[2] for row in rows] == ["succeeded", "failed"]
        assert str(ok["run_id"]) in rows[0] and str(failed["run_id"]) in rows[1]
        assert "oauth/refresh-token" in rows[1] and "ACCESS_TOKEN" in rows[1]
        assert "upstream_error (permanent)" in rows[1] and "invalid_client" in rows[1]

        only_failed = invoke("runs", "--status", "failed", "--json", env=cli_env)
        assert only_failed.returncode == 0, only_failed.stderr
        assert [r["id"] for r in json.loads(only_failed.stdout)] == [failed["run_id"]]
        other_secret = invoke("runs", "--secret", "CLIENT_ID", env=cli_env)
        assert other_secret.stdout.strip() == "no runs in the log"
        assert invoke("runs", "--limit", "1", "--json", env=cli_env).stdout.count('"id"') == 1

    def test_bad_filters_are_usage_errors(self, offline_env: dict[str, str]) -> None:
        assert invoke("runs", "--status", "finished", env=offline_env).returncode == 2
        assert invoke("runs", "--limit", "0", env=offline_env).returncode == 2
        assert invoke("runs", "recover", "not a run id", env=offline_env).returncode == 2
        bad_secret = invoke("runs", "--secret", "no such name", env=offline_env)
        assert bad_secret.returncode == 2
        assert "error: --secret: 'no such name' is not a secret name" in bad_secret.stderr


class Follower:
    """`tokenfarm runs --follow` as a process whose output lines arrive on a queue."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert process.stdout is not None
        self.stderr = ""
        stdout = process.stdout
        self.reader = threading.Thread(target=lambda: [self.lines.put(line) for line in stdout])
        self.reader.start()

    def wait_for(self, *texts: str, timeout: float = 30) -> str:
        """The first line that contains every text; fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        for line in self.seen:
            if all(text in line for text in texts):
                return line
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                assert self.process.poll() is None, "tokenfarm runs --follow exited early"
                continue
            self.seen.append(line)
            if all(text in line for text in texts):
                return line
        raise AssertionError(f"{texts} did not show within {timeout} s; saw {self.seen}")


@contextmanager
def following(env: dict[str, str], *args: str) -> Iterator[Follower]:
    """`tokenfarm runs --follow ARGS`, interrupted (Ctrl-C) when the block ends."""
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "runs", "--follow", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    follower = Follower(process)
    try:
        yield follower
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        process.wait(timeout=15)
        follower.reader.join(timeout=15)
        assert process.stdout is not None and process.stderr is not None
        follower.stderr = process.stderr.read()
        process.stdout.close()
        process.stderr.close()


class TestFollow:
    async def test_prints_new_runs_as_they_happen_until_ctrl_c(
        self, client: httpx.AsyncClient, token_server: TokenServer, cli_env: dict[str, str]
    ) -> None:
        await setup_oauth(client, token_server)
        before = await refresh(client)

        with following(cli_env, "--interval", "0.2") as follower:
            follower.wait_for("started")
            follower.wait_for(str(before["run_id"]))
            made = await refresh(client)
            # A run may show first as `storing` (its answer kept, not yet written), then again.
            line = follower.wait_for(str(made["run_id"]), "succeeded")
            token_server.state.fault = "http_500"
            failed = await refresh(client)
            failed_line = follower.wait_for(str(failed["run_id"]), "failed")

        assert "refresh" in line and "oauth/refresh-token" in line
        assert "upstream_ambiguous (transient)" in failed_line
        assert follower.process.returncode == 0, follower.stderr
        assert follower.seen.count(follower.wait_for(str(before["run_id"]))) == 1

    async def test_json_lines_with_a_filter(
        self, client: httpx.AsyncClient, token_server: TokenServer, cli_env: dict[str, str]
    ) -> None:
        await setup_oauth(client, token_server)

        with following(cli_env, "--interval", "0.2", "--json", "--status", "failed") as follower:
            time.sleep(0.5)
            await refresh(client)  # succeeds: not shown
            token_server.state.fault = "invalid_client"
            failed = await refresh(client)
            line = follower.wait_for(str(failed["run_id"]))

        assert json.loads(line)["status"] == "failed"
        assert all(json.loads(seen)["status"] == "failed" for seen in follower.seen)
        assert follower.process.returncode == 0, follower.stderr
