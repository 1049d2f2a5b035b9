"""The in-process runner of tests/cli/runner.py leaves nothing behind for the next test."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from app.config import get_settings
from tests.cli.runner import invoke


def test_a_command_leaves_environment_logging_and_settings_as_they_were(tmp_path: Path) -> None:
    root = logging.getLogger()
    before = (root.level, root.handlers[:], [h.formatter for h in root.handlers])
    environment = dict(os.environ)
    # `serve` configures logging for production (JSON), then refuses: no encryption keys.
    env = {
        "TOKENFARM_ENVIRONMENT": "production",
        "TOKENFARM_DATA_DIR": str(tmp_path),
        "TOKENFARM_ENCRYPTION_KEYS": "",
        "TOKENFARM_LOG_LEVEL": "ERROR",
    }

    refused = invoke("serve", "--no-migrate", "--port", "1", env=env)

    assert refused.returncode == 1
    assert "TOKENFARM_ENCRYPTION_KEYS" in refused.stderr
    assert (root.level, root.handlers[:], [h.formatter for h in root.handlers]) == before
    assert dict(os.environ) == environment
    assert get_settings.cache_info().currsize == 0


async def test_a_command_runs_beside_the_tests_event_loop(tmp_path: Path) -> None:
    # `migrate` runs Alembic under asyncio.run: here, a loop is already running.
    env = {"TOKENFARM_ENVIRONMENT": "test", "TOKENFARM_DATA_DIR": str(tmp_path)}
    done = invoke("migrate", env=env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "tokenfarm.db").exists()
