"""The `tokenfarm` command line: the core commands in process, `serve` as a real process."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

from app.config import Settings
from app.main import create_app
from tests.cli.runner import invoke
from tests.processes import free_port, serving


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
        first = invoke(
            "init",
            "--owner-email",
            "Owner@Example.com",
            "--owner-password",
            "a-long-password",
            env=cli_env,
        )
        assert first.returncode == 0, first.stderr
        assert "owner Owner@Example.com created" in first.stdout
        second = invoke(
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
        result = invoke(
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
        result = invoke("serve", "--port", str(free_port()), env=env)
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
        result = invoke("keygen", env={})
        assert result.returncode == 0
        key = result.stdout.strip()
        assert Fernet(key.encode()).decrypt(Fernet(key.encode()).encrypt(b"x")) == b"x"


class TestServiceAccountsAndKeys:
    async def test_a_key_made_on_the_command_line_authenticates(
        self, cli_env: dict[str, str]
    ) -> None:
        assert invoke("migrate", env=cli_env).returncode == 0
        created = invoke("service-accounts", "create", "ci-bot", "--role", "owner", env=cli_env)
        assert created.returncode == 0, created.stderr
        assert "service account ci-bot created" in created.stdout
        made = invoke("api-keys", "create", "ci-bot", "--name", "ci", env=cli_env)
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip()
        assert key.startswith("tfk_")
        # The app as `serve` builds it from the same environment (served in TestServe).
        settings = Settings(
            environment="test",
            database_url=cli_env["TOKENFARM_DATABASE_URL"],
            data_dir=Path(cli_env["TOKENFARM_DATA_DIR"]),
            encryption_keys=cli_env["TOKENFARM_ENCRYPTION_KEYS"],
            jwt_secret=cli_env["TOKENFARM_JWT_SECRET"],
            scheduler_enabled=False,
        )
        application = create_app(settings)
        transport = httpx.ASGITransport(app=application)
        async with (
            application.router.lifespan_context(application),
            httpx.AsyncClient(transport=transport, base_url="http://tokenfarm.test") as http,
        ):
            listed = await http.get(
                "/v1/service-accounts/ci-bot/api-keys", headers={"Authorization": f"Bearer {key}"}
            )
        assert listed.status_code == 200, listed.text
        assert [k["name"] for k in listed.json()] == ["ci"]
        assert key not in listed.text

    def test_unknown_role_and_account_are_refused_with_a_reason(
        self, cli_env: dict[str, str]
    ) -> None:
        assert invoke("migrate", env=cli_env).returncode == 0
        refused = invoke("service-accounts", "create", "x-bot", "--role", "nope", env=cli_env)
        assert refused.returncode == 1
        assert "role 'nope' does not exist" in refused.stderr
        missing = invoke("api-keys", "create", "ghost", "--name", "ci", env=cli_env)
        assert missing.returncode == 1
        assert "service account 'ghost' does not exist" in missing.stderr
