"""`tokenfarm secrets list|show|set|history|rollback`, run in process on both databases."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.cli.runner import invoke
from tests.conftest import (
    CLIENT_SECRET,
    TokenServer,
    create_secret,
    secret_value,
    setup_oauth,
    sqlite_database,
)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLite only (see SQLITE_ONLY_REASON in tests/conftest.py)."""
    return sqlite_database(request, tmp_path)


CANARY = "cli-canary-value-5b1f9e"


def assert_no_values(output: str, *values: str) -> None:
    """None of the values shows anywhere in the output."""
    for value in values:
        assert value not in output, "a secret value was printed"


class TestList:
    async def test_lists_metadata_and_never_a_value(
        self, client: httpx.AsyncClient, token_server: TokenServer, cli_env: dict[str, str]
    ) -> None:
        oauth = await setup_oauth(client, token_server)
        await create_secret(client, "PLAIN", CANARY, expires_at="2099-01-01T00:00:00Z")

        listed = invoke("secrets", "list", env=cli_env)

        assert listed.returncode == 0, listed.stderr
        lines = {line.split()[0]: line for line in listed.stdout.splitlines()[1:] if line.strip()}
        assert set(lines) == {
            "ACCESS_TOKEN",
            "CLIENT_ID",
            "CLIENT_SECRET",
            "PLAIN",
            "REFRESH_TOKEN",
        }
        assert "oauth/refresh-token" in lines["ACCESS_TOKEN"]
        assert " ok " in lines["PLAIN"] and " 1 " in lines["PLAIN"]
        assert "in " in lines["PLAIN"]  # expires in … years
        assert_no_values(listed.stdout + listed.stderr, CANARY, CLIENT_SECRET, oauth.refresh_token)

    async def test_json_is_the_metadata_the_api_shows(
        self, client: httpx.AsyncClient, cli_env: dict[str, str]
    ) -> None:
        await create_secret(client, "PLAIN", CANARY)

        listed = invoke("secrets", "list", "--json", env=cli_env)

        assert listed.returncode == 0, listed.stderr
        secrets = json.loads(listed.stdout)
        api = (await client.get("/v1/secrets")).json()
        assert secrets == api
        assert "value" not in secrets[0]
        assert_no_values(listed.stdout, CANARY)

    def test_an_empty_store_says_so(self, cli_env: dict[str, str]) -> None:
        listed = invoke("secrets", "list", env=cli_env)
        assert listed.returncode == 0, listed.stderr
        assert "no secrets yet" in listed.stdout


class TestShow:
    async def test_shows_metadata_without_the_value(
        self, client: httpx.AsyncClient, token_server: TokenServer, cli_env: dict[str, str]
    ) -> None:
        oauth = await setup_oauth(client, token_server)

        shown = invoke("secrets", "show", "REFRESH_TOKEN", env=cli_env)

        assert shown.returncode == 0, shown.stderr
        assert "REFRESH_TOKEN" in shown.stdout
        assert "environment-specific" in shown.stdout and "test" in shown.stdout
        assert_no_values(shown.stdout + shown.stderr, oauth.refresh_token)
        as_json = invoke("secrets", "show", "ACCESS_TOKEN", "--json", env=cli_env)
        assert json.loads(as_json.stdout)["refresh_endpoint"] == "oauth/refresh-token"

    def test_an_unknown_secret_exits_1(self, cli_env: dict[str, str]) -> None:
        shown = invoke("secrets", "show", "NOPE", env=cli_env)
        assert shown.returncode == 1
        assert "error: secret 'NOPE' does not exist" in shown.stderr
        assert shown.stdout == ""


class TestSet:
    async def test_from_an_environment_variable(
        self, client: httpx.AsyncClient, cli_env: dict[str, str]
    ) -> None:
        await create_secret(client, "TOKEN")

        done = invoke(
            "secrets", "set", "TOKEN", "--from-env", "MY_TOKEN", env={**cli_env, "MY_TOKEN": CANARY}
        )

        assert done.returncode == 0, done.stderr
        assert "TOKEN: set, version 1 in test" in done.stdout
        assert await secret_value(client, "TOKEN") == CANARY
        assert_no_values(done.stdout + done.stderr, CANARY)
        versions = (await client.get("/v1/secrets/TOKEN/versions")).json()
        assert [(v["source"], v["actor"]) for v in versions] == [("manual", "system:cli")]

    async def test_from_a_file_drops_one_trailing_newline(
        self, client: httpx.AsyncClient, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        await create_secret(client, "TOKEN")
        path = tmp_path / "token.txt"
        path.write_text(CANARY + "\n")

        done = invoke("secrets", "set", "TOKEN", "--from-file", str(path), env=cli_env)

        assert done.returncode == 0, done.stderr
        assert await secret_value(client, "TOKEN") == CANARY
        assert_no_values(done.stdout + done.stderr, CANARY)

    async def test_from_stdin_with_an_expiry_and_an_environment(
        self, client: httpx.AsyncClient, cli_env: dict[str, str]
    ) -> None:
        await create_secret(client, "TOKEN")

        done = invoke(
            "secrets",
            "set",
            "TOKEN",
            "--environment",
            "production",
            "--expires-at",
            "2099-01-01T01:00:00+01:00",
            env=cli_env,
            stdin=CANARY + "\n",
        )

        assert done.returncode == 0, done.stderr
        assert "version 1 in production, expires 2099-01-01 00:00:00Z" in done.stdout
        read = await client.get("/v1/secrets/TOKEN/value", params={"environment": "production"})
        assert read.json()["value"] == CANARY
        assert read.json()["expires_at"].startswith("2099-01-01T00:00:00")
        assert await secret_value(client, "TOKEN") is None  # nothing in `test`

    async def test_a_json_value(self, client: httpx.AsyncClient, cli_env: dict[str, str]) -> None:
        await create_secret(client, "KEY_FILE", environment_specific=False)
        document = {"client_email": "sa@example.com", "private_key": CANARY}

        done = invoke(
            "secrets", "set", "KEY_FILE", "--json-value", env=cli_env, stdin=json.dumps(document)
        )

        assert done.returncode == 0, done.stderr
        assert await secret_value(client, "KEY_FILE") == document
        broken = invoke(
            "secrets", "set", "KEY_FILE", "--json-value", env=cli_env, stdin='{"a": ' + CANARY
        )
        assert broken.returncode == 1
        assert "not valid JSON (line 1, column 7)" in broken.stderr
        assert_no_values(broken.stderr + done.stdout, CANARY)

    async def test_refusals_exit_1_and_write_nothing(
        self, client: httpx.AsyncClient, cli_env: dict[str, str]
    ) -> None:
        await create_secret(client, "SHARED", CANARY, environment_specific=False)

        unset = invoke("secrets", "set", "SHARED", "--from-env", "NOT_SET_ANYWHERE", env=cli_env)
        assert unset.returncode == 1
        assert "error: the environment variable NOT_SET_ANYWHERE is not set" in unset.stderr
        empty = invoke("secrets", "set", "SHARED", env=cli_env, stdin="")
        assert empty.returncode == 1
        assert "the value is empty" in empty.stderr
        missing = invoke("secrets", "set", "NOPE", env=cli_env, stdin="x")
        assert missing.returncode == 1
        assert "secret 'NOPE' does not exist" in missing.stderr
        wrong_env = invoke(
            "secrets", "set", "SHARED", "--environment", "production", env=cli_env, stdin="x"
        )
        assert wrong_env.returncode == 1
        assert "holds one value for all environments" in wrong_env.stderr
        assert await secret_value(client, "SHARED") == CANARY
        versions = (await client.get("/v1/secrets/SHARED/versions")).json()
        assert len(versions) == 1

    def test_usage_errors_exit_2_before_anything_is_read(
        self, offline_env: dict[str, str], tmp_path: Path
    ) -> None:
        path = tmp_path / "v"
        path.write_text("x")

        # There is no way to pass the value itself on the command line.
        as_argument = invoke("secrets", "set", "TOKEN", CANARY, env=offline_env)
        assert as_argument.returncode == 2
        both = invoke(
            "secrets", "set", "TOKEN", "--from-env", "X", "--from-file", str(path), env=offline_env
        )
        assert both.returncode == 2
        assert "error: give the value through one of --from-env or --from-file" in both.stderr
        naive = invoke(
            "secrets",
            "set",
            "TOKEN",
            "--from-file",
            str(path),
            "--expires-at",
            "2030-01-01T00:00",
            env=offline_env,
        )
        assert naive.returncode == 2
        assert "give a time zone" in naive.stderr
        bad_env = invoke(
            "secrets",
            "set",
            "TOKEN",
            "--from-file",
            str(path),
            "--environment",
            "moon",
            env=offline_env,
        )
        assert bad_env.returncode == 2
        assert invoke("secrets", "rollback", "TOKEN", "0", env=offline_env).returncode == 2
        assert not (tmp_path / "never-created.db").exists()


class TestHistoryAndRollback:
    async def test_history_lists_versions_and_rollback_restores_one(
        self, client: httpx.AsyncClient, cli_env: dict[str, str]
    ) -> None:
        await create_secret(client, "TOKEN", CANARY + "-1")
        for n in (2, 3):
            put = await client.put("/v1/secrets/TOKEN/value", json={"value": f"{CANARY}-{n}"})
            assert put.status_code == 200, put.text

        history = invoke("secrets", "history", "TOKEN", env=cli_env)

        assert history.returncode == 0, history.stderr
        rows = [line.split() for line in history.stdout.splitlines()[1:] if line.strip()]
        assert [row[0] for row in rows] == ["3", "2", "1"], history.stdout
        assert rows[0][1] == "current" and rows[2][1] == "create"
        assert_no_values(history.stdout + history.stderr, CANARY)

        rolled = invoke("secrets", "rollback", "TOKEN", "1", env=cli_env)

        assert rolled.returncode == 0, rolled.stderr
        assert "TOKEN: version 1 restored, version 4 in test" in rolled.stdout
        assert await secret_value(client, "TOKEN") == CANARY + "-1"
        as_json = json.loads(invoke("secrets", "history", "TOKEN", "--json", env=cli_env).stdout)
        assert [(v["version"], v["source"], v["current"]) for v in as_json[:2]] == [
            (4, "rollback", True),
            (3, "manual", False),
        ]
        assert_no_values(rolled.stdout + rolled.stderr, CANARY)

    async def test_rollback_to_a_missing_version_exits_1(
        self, client: httpx.AsyncClient, cli_env: dict[str, str]
    ) -> None:
        await create_secret(client, "TOKEN", CANARY)

        missing = invoke("secrets", "rollback", "TOKEN", "7", env=cli_env)

        assert missing.returncode == 1
        assert "secret 'TOKEN' has no version 7" in missing.stderr
        assert invoke("secrets", "history", "NOPE", env=cli_env).returncode == 1
