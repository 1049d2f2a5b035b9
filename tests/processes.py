"""Real tokenfarm processes for tests: the CLI, and `tokenfarm serve` on a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from app.config import Settings


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


@contextmanager
def serving(env: dict[str, str], *extra: str) -> Iterator[str]:
    """`tokenfarm serve` as a real process; yields its base URL once it answers."""
    with server_process(env, *extra) as (base, _):
        yield base


@contextmanager
def server_process(
    env: dict[str, str], *extra: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`tokenfarm serve` as a real process; yields its base URL and the process once it answers.

    A test may kill the process itself (`kill_hard`); it is reaped either way.
    """
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), *extra],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, "tokenfarm serve exited early"
                assert time.monotonic() < deadline, "tokenfarm serve did not start in 30 s"
                time.sleep(0.2)
        yield base, process
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=10)


def kill_hard(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL: the process gets no chance to finish anything."""
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def replica_env(settings: Settings, database_url: str, data_dir: str) -> dict[str, str]:
    """The environment of another process serving the same database as the test's app: the
    same keys, so it reads the same secrets and accepts the same login tokens."""
    assert settings.encryption_keys and settings.jwt_secret
    return {
        "TOKENFARM_ENVIRONMENT": "test",
        "TOKENFARM_DATABASE_URL": database_url,
        "TOKENFARM_DATA_DIR": data_dir,
        "TOKENFARM_ENCRYPTION_KEYS": settings.encryption_keys,
        "TOKENFARM_JWT_SECRET": settings.jwt_secret,
        "TOKENFARM_EGRESS_ALLOW": "127.0.0.0/8",
        "TOKENFARM_LOG_LEVEL": "WARNING",
        "TOKENFARM_SCHEDULER_ENABLED": "false",
    }
