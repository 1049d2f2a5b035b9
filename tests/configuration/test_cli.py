"""`tokenfarm apply` and `tokenfarm export`, run in process: output and exit codes scripts
can trust (0 applied, 1 invalid document, 2 apply failed; nothing changes unless 0)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml
from cryptography.fernet import Fernet

from app.config import Settings
from tests.cli.runner import invoke
from tests.configuration.conftest import Setup, snapshot
from tests.conftest import create_secret, sqlite_database
from tests.processes import replica_env


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLite only (see SQLITE_ONLY_REASON in tests/conftest.py)."""
    return sqlite_database(request, tmp_path)


@pytest.fixture
def cli_env(settings: Settings, database_url: str, tmp_path: Path, setup: Setup) -> dict[str, str]:
    """A command on the test's database with the app's keys, and the document's env."""
    return {**replica_env(settings, database_url, str(tmp_path)), **setup.env}


def write(setup: Setup, text: str | None = None, name: str = "tokenfarm.yaml") -> str:
    """Write the document (or `text`) next to its client_secret.txt; answers its path."""
    path = setup.directory / name
    path.write_text(text if text is not None else setup.text())
    return str(path)


class TestApply:
    async def test_applies_then_reports_no_changes(
        self, cli_env: dict[str, str], setup: Setup, client: httpx.AsyncClient
    ) -> None:
        path = write(setup)
        first = invoke("apply", "-f", path, env=cli_env)
        assert first.returncode == 0, first.stderr
        assert "+ create    role refresher" in first.stdout
        assert "+ create    secret CLIENT_SECRET (with a value)" in first.stdout
        assert "Applied: 12 created, 0 updated, 0 deleted, 0 unchanged." in first.stdout
        secret = (await client.get("/v1/secrets/CLIENT_SECRET/value")).json()
        assert secret["value"] == setup.client_secret
        second = invoke("apply", "-f", path, env=cli_env)
        assert second.returncode == 0, second.stderr
        assert second.stdout.strip() == "No changes (12 unchanged)."
        for output in (first.stdout, first.stderr, second.stdout, second.stderr):
            setup.canaries.assert_absent(output, "the command's output")

    async def test_a_dry_run_shows_the_diff_and_changes_nothing(
        self, cli_env: dict[str, str], setup: Setup, client: httpx.AsyncClient
    ) -> None:
        assert invoke("apply", "-f", write(setup), env=cli_env).returncode == 0
        before = await snapshot(client)
        document = setup.copy()
        document["secrets"][0]["description"] = "renamed"
        document["schedules"] = document["schedules"][:1]
        path = write(setup, setup.text(document), "changed.yaml")
        dry = invoke("apply", "-f", path, "--dry-run", "--prune", env=cli_env)
        assert dry.returncode == 0, dry.stderr
        assert "~ update    secret CLIENT_ID (description)" in dry.stdout
        assert "- delete    schedule ping-nightly" in dry.stdout
        assert "Dry run, nothing was changed: 0 to create, 1 to update, 1 to delete" in dry.stdout
        assert await snapshot(client) == before
        real = invoke("apply", "-f", path, "--prune", env=cli_env)
        assert real.returncode == 0, real.stderr
        assert [s["name"] for s in (await client.get("/v1/schedules")).json()] == ["hourly"]

    async def test_reads_the_document_from_stdin(
        self, cli_env: dict[str, str], setup: Setup, client: httpx.AsyncClient
    ) -> None:
        result = invoke(
            "apply", "-f", "-", env=cli_env, stdin="version: 1\nroles: [{name: piped}]\n"
        )
        assert result.returncode == 0, result.stderr
        assert (await client.get("/v1/roles/piped")).status_code == 200


class TestExitCodes:
    async def test_an_invalid_document_exits_1_naming_file_line_and_field(
        self, cli_env: dict[str, str], setup: Setup, client: httpx.AsyncClient
    ) -> None:
        before = await snapshot(client)
        document = setup.copy()
        document["secrets"][0]["value"] = "canary-inline-5c2e"
        document["schedules"][0]["run_as"] = "nobody"
        path = write(setup, setup.text(document), "broken.yaml")
        result = invoke("apply", "-f", path, env=cli_env)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert lines[-2].startswith(f"{path}:") and "secrets[0].value: an inline value" in lines[-2]
        assert lines[-1] == "1 problem; nothing was changed"
        assert "canary-inline" not in result.stderr + result.stdout
        # Fixed shape, broken reference: still 1, still nothing changed.
        del document["secrets"][0]["value"]
        path = write(setup, setup.text(document), "broken.yaml")
        result = invoke("apply", "-f", path, env=cli_env)
        assert result.returncode == 1
        line = next(
            n for n, text in enumerate(setup.text(document).splitlines(), 1) if "nobody" in text
        )
        assert f"{path}:{line}: schedules[0].run_as: service account 'nobody'" in result.stderr
        assert await snapshot(client) == before

    async def test_a_document_nested_too_deep_exits_1_without_a_traceback(
        self, cli_env: dict[str, str], setup: Setup
    ) -> None:
        path = write(setup, "version: 1\nsecrets: " + "[" * 2000 + "]" * 2000, "deep.yaml")
        result = invoke("apply", "-f", path, env=cli_env)
        assert result.returncode == 1
        assert f"{path}:2: the document nests deeper than" in result.stderr
        assert "Traceback" not in result.stderr + result.stdout

    async def test_a_missing_file_or_variable_exits_1(
        self, cli_env: dict[str, str], setup: Setup
    ) -> None:
        missing = invoke("apply", "-f", str(setup.directory / "nope.yaml"), env=cli_env)
        assert missing.returncode == 1
        assert "nope.yaml can't be read" in missing.stderr
        env = {k: v for k, v in cli_env.items() if k != "TF_CLIENT_ID"}
        result = invoke("apply", "-f", write(setup), env=env)
        assert result.returncode == 1
        assert "secrets[0].value_from.env: the environment variable TF_CLIENT_ID is not set" in (
            result.stderr
        )

    async def test_a_change_a_store_refuses_exits_2_and_nothing_is_applied(
        self, cli_env: dict[str, str], setup: Setup, client: httpx.AsyncClient
    ) -> None:
        await create_secret(client, "CLIENT_ID", "id", environment_specific=False)
        await create_secret(client, "CLIENT_SECRET", "secret", environment_specific=False)
        await create_secret(client, "X_TOKEN")
        await create_secret(client, "Y_TOKEN")
        params = {
            "token_url": "https://auth.example.com/token",
            "client_id_secret": "CLIENT_ID",
            "client_secret_secret": "CLIENT_SECRET",
        }
        bound = await client.post(
            "/v1/secrets/X_TOKEN/refresher",
            json={"preset": "oauth2_client_credentials", "params": params},
        )
        assert bound.status_code == 200, bound.text
        response = await client.patch(
            "/v1/secrets/Y_TOKEN", json={"refresh_endpoint": "refreshers/X_TOKEN"}
        )
        assert response.status_code == 200, response.text
        before = await snapshot(client)
        document = {
            "version": 1,
            "roles": [{"name": "extra"}],
            "secrets": [
                {
                    "name": "X_TOKEN",
                    "refresher": {
                        "preset": "oauth2_client_credentials",
                        "params": {**params, "scope": "other"},
                    },
                }
            ],
        }
        path = write(setup, yaml.safe_dump(document), "conflict.yaml")
        result = invoke("apply", "-f", path, env=cli_env)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "secret 'X_TOKEN': " in result.stderr and "nothing was changed" in result.stderr
        # A dry run carries the plan out and rolls it back, so it fails the same way.
        assert invoke("apply", "-f", path, "--dry-run", env=cli_env).returncode == 2
        assert await snapshot(client) == before


class TestExport:
    async def test_prints_yaml_without_values_that_applies_back(
        self, cli_env: dict[str, str], setup: Setup, client: httpx.AsyncClient
    ) -> None:
        assert invoke("apply", "-f", write(setup), env=cli_env).returncode == 0
        exported = invoke("export", env=cli_env)
        assert exported.returncode == 0, exported.stderr
        setup.canaries.assert_absent(exported.stdout, "the export")
        document = yaml.safe_load(exported.stdout)
        assert document["version"] == 1
        assert {s["slug"] for s in document["services"]} >= {"oauth", "refreshers"}
        client_id = next(s for s in document["secrets"] if s["name"] == "CLIENT_ID")
        assert client_id["value_from"] == {"env": "CLIENT_ID"}
        env = {
            **cli_env,
            "CLIENT_ID": (await client.get("/v1/secrets/CLIENT_ID/value")).json()["value"],
            "CLIENT_SECRET": setup.client_secret,
            "REFRESH_TOKEN": setup.refresh_token,
        }
        path = write(setup, exported.stdout, "exported.yaml")
        again = invoke("apply", "-f", path, env=env)
        assert again.returncode == 0, again.stderr
        assert again.stdout.startswith("No changes"), again.stdout


def test_an_unmigrated_database_or_bad_settings_exit_2(tmp_path: Path) -> None:
    env = {
        "TOKENFARM_ENVIRONMENT": "test",
        "TOKENFARM_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}",
        "TOKENFARM_DATA_DIR": str(tmp_path),
        "TOKENFARM_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "TOKENFARM_JWT_SECRET": "x" * 48,
    }
    document = tmp_path / "roles.yaml"
    document.write_text("version: 1\nroles: [{name: a}]\n")
    result = invoke("apply", "-f", str(document), env=env)
    assert result.returncode == 2
    assert "tokenfarm migrate" in result.stderr and "nothing was changed" in result.stderr
    invalid = invoke("apply", "-f", str(document), env={**env, "TOKENFARM_ENVIRONMENT": "moon"})
    assert invalid.returncode == 2
    unreachable = {**env, "TOKENFARM_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"}
    result = invoke("apply", "-f", str(document), env=unreachable)
    assert result.returncode == 2
    assert "can't be reached" in result.stderr and "Traceback" not in result.stderr
