"""`tokenfarm scheduler` on its own logs like `tokenfarm serve`: the configured format and level."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys

import pytest

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@sqlite_only
def test_logs_json_lines_at_the_configured_level(cli_env: dict[str, str]) -> None:
    env = {
        **os.environ,
        **cli_env,
        "TOKENFARM_LOG_FORMAT": "json",
        "TOKENFARM_LOG_LEVEL": "INFO",
        "TOKENFARM_SCHEDULER_POLL_SECONDS": "0.2",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "scheduler"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stderr is not None
        # The first line comes once it has started; without logging set up there is none.
        ready, _, _ = select.select([process.stderr], [], [], 20)
        first = process.stderr.readline() if ready else ""
    finally:
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=30)

    lines = [line for line in (first + rest).splitlines() if line.strip()]
    assert first, "no log line within 20 s of starting"
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    messages = [record["message"] for record in records]
    assert any(m.startswith("scheduler ") and m.endswith(" started") for m in messages), messages
    assert any(m.endswith(" stopped") for m in messages), messages
    assert all(record["level"] in {"INFO", "WARNING", "ERROR"} for record in records)
    assert process.returncode == 0
