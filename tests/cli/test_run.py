"""`tokenfarm run SLUG/ID` and `tokenfarm refresh SECRET`: the real runner in the CLI process,
against the loopback token server, on both databases."""

from __future__ import annotations

import json

import httpx

from tests.cli.runner import invoke
from tests.conftest import CLIENT_SECRET, TokenServer, secret_value, setup_oauth


class TestRefresh:
    async def test_refreshes_and_prints_versions_but_no_value(
        self, client: httpx.AsyncClient, token_server: TokenServer, cli_env: dict[str, str]
    ) -> None:
        oauth = await setup_oauth(client, token_server)

        done = invoke("refresh", "ACCESS_TOKEN", env=cli_env)

        assert done.returncode == 0, done.stderr
        first, *rest = done.stdout.splitlines()
        assert first.startswith("succeeded  oauth/refresh-token  run ")
        assert rest[0].startswith("  ACCESS_TOKEN  version 1  expires ")
        assert token_server.state.token_requests == 1
        access = await secret_value(client, "ACCESS_TOKEN")
        refresh = await secret_value(client, "REFRESH_TOKEN")
        assert token_server.state.is_active(refresh) and refresh != oauth.refresh_token
        output = done.stdout + done.stderr
        for value in (access, refresh, oauth.refresh_token, CLIENT_SECRET):
            assert value not in output
        run_id = first.rsplit(" ", 1)[1]
        logged = (await client.get(f"/v1/runs/{run_id}")).json()
        assert (logged["status"], logged["trigger"], logged["actor"]) == (
            "succeeded",
            "refresh",
            "system:cli",
        )

    async def test_a_failed_refresh_exits_1_with_type_class_and_message(
        self, client: httpx.AsyncClient, token_server: TokenServer, cli_env: dict[str, str]
    ) -> None:
        oauth = await setup_oauth(client, token_server)
        token_server.state.fault = "invalid_grant"

        failed = invoke("refresh", "ACCESS_TOKEN", env=cli_env)

        assert failed.returncode == 1
        assert failed.stdout.startswith("failed  oauth/refresh-token  run ")
        assert "error: upstream_error (permanent): " in failed.stderr
        assert "invalid_grant" in failed.stderr
        for value in (oauth.refresh_token, CLIENT_SECRET):
            assert value not in failed.stdout + failed.stderr
        assert await secret_value(client, "REFRESH_TOKEN") == oauth.refresh_token
        state = (await client.get("/v1/secrets/ACCESS_TOKEN")).json()
        assert state["status"] == "needs_reauth"

        # The grant is dead: refreshes stop until --force (or a value set by hand).
        token_server.state.fault = None
        refused = invoke("refresh", "ACCESS_TOKEN", env=cli_env)
        assert refused.returncode == 1
        assert "error: needs_reauth" in refused.stderr
        assert token_server.state.token_requests == 1
        # The injected fault spent nothing: the grant still works when forced.
        forced = invoke("refresh", "ACCESS_TOKEN", "--force", env=cli_env)
        assert forced.returncode == 0, forced.stderr
        assert (await client.get("/v1/secrets/ACCESS_TOKEN")).json()["status"] == "ok"

    async def test_a_secret_without_refresh_endpoint_or_unknown_exits_1(
        self, client: httpx.AsyncClient, token_server: TokenServer, cli_env: dict[str, str]
    ) -> None:
        await setup_oauth(client, token_server)

        unbound = invoke("refresh", "REFRESH_TOKEN", env=cli_env)
        assert unbound.returncode == 1
        assert "error: secret 'REFRESH_TOKEN' has no refresh_endpoint" in unbound.stderr
        missing = invoke("refresh", "NOPE", env=cli_env)
        assert missing.returncode == 1
        assert "error: secret 'NOPE' does not exist" in missing.stderr
        assert token_server.state.token_requests == 0


class TestRun:
    async def test_runs_an_endpoint_and_prints_what_it_wrote_as_json(
        self, client: httpx.AsyncClient, token_server: TokenServer, cli_env: dict[str, str]
    ) -> None:
        await setup_oauth(client, token_server)

        done = invoke("run", "oauth/refresh-token", "--json", env=cli_env)

        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["status"] == "succeeded" and result["error"] is None
        assert [(s["name"], s["version"]) for s in result["secrets"]] == [
            ("ACCESS_TOKEN", 1),
            ("REFRESH_TOKEN", 2),
        ]
        assert result["secrets"][0]["expires_at"] is not None
        assert await secret_value(client, "ACCESS_TOKEN") not in done.stdout

    async def test_an_upstream_fault_exits_1_and_changes_nothing(
        self, client: httpx.AsyncClient, token_server: TokenServer, cli_env: dict[str, str]
    ) -> None:
        oauth = await setup_oauth(client, token_server)
        token_server.state.fault = "http_503"

        failed = invoke("run", "oauth/refresh-token", "--json", env=cli_env)

        assert failed.returncode == 1
        result = json.loads(failed.stdout)
        assert result["status"] == "failed"
        assert (result["error"]["type"], result["error"]["error_class"]) == (
            "upstream_ambiguous",
            "transient",
        )
        assert "error: upstream_ambiguous (transient): " in failed.stderr
        assert "503" in failed.stderr
        assert await secret_value(client, "REFRESH_TOKEN") == oauth.refresh_token
        assert await secret_value(client, "ACCESS_TOKEN") is None

    async def test_an_unknown_endpoint_exits_1(
        self, client: httpx.AsyncClient, cli_env: dict[str, str]
    ) -> None:
        missing = invoke("run", "nothing/here", env=cli_env)
        assert missing.returncode == 1
        assert missing.stderr.startswith("error: ") and "'nothing'" in missing.stderr


def test_a_malformed_endpoint_is_a_usage_error(offline_env: dict[str, str]) -> None:
    malformed = invoke("run", "no-slash", env=offline_env)
    assert malformed.returncode == 2
    assert "is not SLUG/READABLE_ID" in malformed.stderr
