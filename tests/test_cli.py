"""The `tokenfarm` command line, run as a real process."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

from tests.processes import free_port, run_cli, serving


@pytest.fixture
def cli_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment of a `test` deployment on the test's database."""
    return {
        "TOKENFARM_ENVIRONMENT": "test",
        "TOKENFARM_DATABASE_URL": database_url,
        "TOKENFARM_DATA_DIR": str(tmp_path),
        "TOKENFARM_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "TOKENFARM_JWT_SECRET": secrets.token_urlsafe(48),
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
        with serving(cli_env) as base:
            ready = httpx.get(f"{base}/readyz", timeout=2)
            assert ready.status_code == 200, ready.text
            assert ready.json()["status"] == "ready"
            assert httpx.get(f"{base}/healthz", timeout=2).json() == {"status": "ok"}
            docs = httpx.get(f"{base}/docs", timeout=2)
            assert docs.status_code == 200 and "swagger" in docs.text.lower()


class TestKeygen:
    def test_prints_a_usable_fernet_key(self) -> None:
        result = run_cli("keygen", env={})
        assert result.returncode == 0
        key = result.stdout.strip()
        assert Fernet(key.encode()).decrypt(Fernet(key.encode()).encrypt(b"x")) == b"x"


class TestServiceAccountsAndKeys:
    def test_a_key_made_on_the_command_line_authenticates(self, cli_env: dict[str, str]) -> None:
        assert run_cli("migrate", env=cli_env).returncode == 0
        created = run_cli("service-accounts", "create", "ci-bot", "--role", "owner", env=cli_env)
        assert created.returncode == 0, created.stderr
        assert "service account ci-bot created" in created.stdout
        made = run_cli("api-keys", "create", "ci-bot", "--name", "ci", env=cli_env)
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip()
        assert key.startswith("tfk_")
        with serving(cli_env, "--no-migrate") as base:
            listed = httpx.get(
                f"{base}/v1/service-accounts/ci-bot/api-keys",
                headers={"Authorization": f"Bearer {key}"},
                timeout=2,
            )
        assert listed.status_code == 200, listed.text
        assert [k["name"] for k in listed.json()] == ["ci"]
        assert key not in listed.text

    def test_unknown_role_and_account_are_refused_with_a_reason(
        self, cli_env: dict[str, str]
    ) -> None:
        assert run_cli("migrate", env=cli_env).returncode == 0
        refused = run_cli("service-accounts", "create", "x-bot", "--role", "nope", env=cli_env)
        assert refused.returncode == 1
        assert "role 'nope' does not exist" in refused.stderr
        missing = run_cli("api-keys", "create", "ghost", "--name", "ci", env=cli_env)
        assert missing.returncode == 1
        assert "service account 'ghost' does not exist" in missing.stderr
