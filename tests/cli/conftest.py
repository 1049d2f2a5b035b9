"""Fixtures for the operator commands: the environment of a command that works on the test's
database with the test app's keys, and one whose database is never reached."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from app.config import Settings
from tests.processes import replica_env


@pytest.fixture
def cli_env(settings: Settings, database_url: str, tmp_path: Path) -> dict[str, str]:
    """The environment of a `tokenfarm` command on the test's database, with the app's keys
    (so it reads what the in-process app wrote) and loopback upstreams allowed."""
    return {**replica_env(settings, database_url, str(tmp_path)), "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def offline_env(tmp_path: Path) -> dict[str, str]:
    """An environment whose database is never reached: for usage errors, which stop before."""
    return {
        "TOKENFARM_ENVIRONMENT": "test",
        "TOKENFARM_DATABASE_URL": f"sqlite:///{tmp_path / 'never-created.db'}",
        "TOKENFARM_DATA_DIR": str(tmp_path),
        "TOKENFARM_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "TOKENFARM_JWT_SECRET": secrets.token_urlsafe(48),
    }
