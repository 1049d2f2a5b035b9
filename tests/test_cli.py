"""The `tokenfarm` command line, run as a real process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `tokenfarm ARGS` in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def cli_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment of a `test` deployment on the test's database."""
    return {
        "TOKENFARM_ENVIRONMENT": "test",
        "TOKENFARM_DATABASE_URL": database_url,
        "TOKENFARM_DATA_DIR": str(tmp_path),
        "TOKENFARM_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
    }


class TestInit:
    def test_creates_the_owner_once_and_then_changes_nothing(self, cli_env: dict[str, str]) -> None:
        first = run_cli(
            "init",
            "--owner-email",
            "Owner@Example.com",
            "--owner-password",
            "a-long-password",
            env=cli_env,
        )
        assert first.returncode == 0, first.stderr
        assert "owner Owner@Example.com created" in first.stdout
        second = run_cli(
            "init",
            "--owner-email",
            "owner@example.com",
            "--owner-password",
            "another-password",
            env=cli_env,
        )
        assert second.returncode == 0, second.stderr
        assert "already exists; nothing changed" in second.stdout

    def test_short_password_is_refused_with_a_reason(self, cli_env: dict[str, str]) -> None:
        result = run_cli(
            "init", "--owner-email", "o@example.com", "--owner-password", "short", env=cli_env
        )
        assert result.returncode == 1
        assert "at least 12 characters" in result.stderr
        assert "short" not in result.stderr.replace("at least", "")


class TestServe:
    def test_refuses_to_start_without_keys_outside_development(self, tmp_path: Path) -> None:
        env = {
            "TOKENFARM_ENVIRONMENT": "production",
            "TOKENFARM_DATA_DIR": str(tmp_path),
            "TOKENFARM_ENCRYPTION_KEYS": "",
        }
        result = run_cli("serve", "--port", str(free_port()), env=env)
        assert result.returncode == 1
        assert "TOKENFARM_ENCRYPTION_KEYS" in result.stderr
        assert "tokenfarm keygen" in result.stderr

    def test_serves_health_and_readiness(self, cli_env: dict[str, str]) -> None:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            env={**os.environ, **cli_env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                    break
                except httpx.TransportError:
                    assert process.poll() is None, "tokenfarm serve exited early"
                    assert time.monotonic() < deadline, "tokenfarm serve did not start in 30 s"
                    time.sleep(0.2)
            assert ready.status_code == 200, ready.text
            assert ready.json()["status"] == "ready"
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json() == {
                "status": "ok"
            }
            docs = httpx.get(f"http://127.0.0.1:{port}/docs", timeout=2)
            assert docs.status_code == 200 and "swagger" in docs.text.lower()
        finally:
            process.terminate()
            process.wait(timeout=10)


class TestKeygen:
    def test_prints_a_usable_fernet_key(self) -> None:
        result = run_cli("keygen", env={})
        assert result.returncode == 0
        key = result.stdout.strip()
        assert Fernet(key.encode()).decrypt(Fernet(key.encode()).encrypt(b"x")) == b"x"
