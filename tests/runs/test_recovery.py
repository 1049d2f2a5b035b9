"""No rotated token is lost: when storing a run's writes fails after the upstream answered, the
answer stays encrypted in the run, and `POST /v1/runs/{id}/recover` or `tokenfarm runs recover`
writes it. One test kills the serving process between the upstream's answer and the commit."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.config import Settings
from tests.auth.conftest import Callers
from tests.auth.conftest import callers as callers  # the fixture, for this module
from tests.burst import burst_get
from tests.cli.runner import invoke
from tests.conftest import TokenServer, secret_value, setup_oauth, wait_at_gate
from tests.processes import kill_hard, replica_env, server_process


async def rotate_once(client: httpx.AsyncClient, server: TokenServer) -> None:
    """The canonical refresh, rotated once so both secrets hold tokens the server issued."""
    await setup_oauth(client, server)
    response = await client.get("/refresh/ACCESS_TOKEN")
    assert response.status_code == 200, response.text
    server.state.reset_counters()


async def conflicted_run(client: httpx.AsyncClient, server: TokenServer) -> httpx.Response:
    """A refresh whose writes lose their compare-and-set: ACCESS_TOKEN is set by hand mid-run."""
    await rotate_once(client, server)
    gate = threading.Event()
    server.state.gate = gate
    refreshing = asyncio.create_task(client.get("/refresh/ACCESS_TOKEN"))
    await wait_at_gate(server, 1)  # the run has read ACCESS_TOKEN's version and waits upstream
    by_hand = await client.put("/v1/secrets/ACCESS_TOKEN/value", json={"value": "by-hand"})
    assert by_hand.status_code == 200, by_hand.text
    server.state.gate = None
    gate.set()
    response = await refreshing
    assert response.status_code == 409, response.text
    return response


class TestStoringFails:
    async def test_the_answer_is_kept_and_the_error_says_how_to_recover_it(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        response = await conflicted_run(client, token_server)

        error = response.json()["error"]
        run_id = response.json()["run_id"]
        assert error["type"] == "version_conflict"
        assert error["recoverable"] is True
        assert f"tokenfarm runs recover {run_id}" in error["message"]
        assert f"POST /v1/runs/{run_id}/recover" in error["message"]
        # The stored refresh token was spent upstream: without recovery the grant would be lost.
        stored_refresh = await secret_value(client, "REFRESH_TOKEN")
        assert not token_server.state.is_active(stored_refresh)
        assert await secret_value(client, "ACCESS_TOKEN") == "by-hand"
        listing = (await client.get("/v1/runs", params={"status": "failed"})).json()
        assert [(r["id"], r["recoverable"]) for r in listing] == [(run_id, True)]

    async def test_recover_refuses_to_overwrite_a_newer_value_unless_forced(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        response = await conflicted_run(client, token_server)
        run_id = response.json()["run_id"]
        before = {
            "response": response.text,
            "runs": (await client.get("/v1/runs")).text,
            "detail": (await client.get(f"/v1/runs/{run_id}")).text,
        }

        refused = await client.post(f"/v1/runs/{run_id}/recover")
        assert refused.status_code == 409, refused.text
        assert "ACCESS_TOKEN" in refused.json()["error"]["message"]
        assert "force" in refused.json()["error"]["message"]
        assert await secret_value(client, "ACCESS_TOKEN") == "by-hand"

        recovered = await client.post(f"/v1/runs/{run_id}/recover", params={"force": "true"})

        assert recovered.status_code == 200, recovered.text
        assert recovered.json()["status"] == "recovered"
        assert sorted(w["secret"] for w in recovered.json()["written"]) == [
            "ACCESS_TOKEN",
            "REFRESH_TOKEN",
        ]
        access = await secret_value(client, "ACCESS_TOKEN")
        refresh = await secret_value(client, "REFRESH_TOKEN")
        assert token_server.state.is_active(access)
        assert token_server.state.is_active(refresh)
        # The kept answer never showed before it was recovered.
        for where, text in before.items():
            assert access not in text, where
            assert refresh not in text, where
        run = (await client.get(f"/v1/runs/{run_id}")).json()
        assert (run["status"], run["recoverable"]) == ("recovered", False)
        versions = (await client.get("/v1/secrets/REFRESH_TOKEN/versions")).json()
        assert versions[0]["source"] == "recovery"
        assert versions[0]["run_id"] == run_id
        # The rotation goes on from the recovered refresh token.
        assert (await client.get("/refresh/ACCESS_TOKEN")).status_code == 200
        again = await client.post(f"/v1/runs/{run_id}/recover")
        assert again.status_code == 409
        assert "nothing to recover" in again.json()["error"]["message"]


class TestRecoverRoute:
    async def test_unknown_run_is_404(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/v1/runs/no-such-run/recover")
        assert response.status_code == 404, response.text
        assert response.json()["error"]["type"] == "not_found"

    async def test_a_run_that_stored_its_writes_has_nothing_to_recover(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await setup_oauth(client, token_server)
        run_id = (await client.get("/refresh/ACCESS_TOKEN")).json()["run_id"]

        response = await client.post(f"/v1/runs/{run_id}/recover")

        assert response.status_code == 409, response.text
        assert "nothing to recover" in response.json()["error"]["message"]

    async def test_recovering_needs_secrets_manage(
        self, client: httpx.AsyncClient, token_server: TokenServer, callers: Callers
    ) -> None:
        response = await conflicted_run(client, token_server)
        reader = await callers.holding("runs.read", "secrets.update_from_service:*")

        refused = await reader.post(f"/v1/runs/{response.json()['run_id']}/recover")

        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["permission"] == "secrets.manage"


async def wait_for_storing_run(database_url: str) -> str:
    """The id of the run that has kept its answer and is blocked storing it."""
    connection = await asyncpg.connect(database_url)
    try:
        for _ in range(200):
            found = await connection.fetchval("SELECT id FROM run WHERE status = 'storing'")
            if found:
                return str(found)
            await asyncio.sleep(0.05)
    finally:
        await connection.close()
    raise AssertionError("no run reached 'storing' within 10 s")


# Replicas and row locks need PostgreSQL: only that backend of `database_url`.
@pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
class TestKilledProcess:
    async def test_kill_between_the_answer_and_the_commit_then_recover(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        settings: Settings,
        database_url: str,
        tmp_path: Path,
    ) -> None:
        await rotate_once(client, token_server)
        spent_refresh = await secret_value(client, "REFRESH_TOKEN")
        env = replica_env(settings, database_url, str(tmp_path))
        blocker = await asyncpg.connect(database_url)
        try:
            with server_process(env, "--no-migrate") as (base, process):
                # Writing the secrets blocks on these row locks; keeping the answer does not.
                transaction = blocker.transaction()
                await transaction.start()
                await blocker.execute("SELECT id FROM secret_value FOR UPDATE")
                caller = asyncio.ensure_future(
                    burst_get(
                        [f"{base}/refresh/ACCESS_TOKEN"],
                        {"Authorization": client.headers["Authorization"]},
                    )
                )
                run_id = await wait_for_storing_run(database_url)
                assert token_server.state.token_requests == 1  # the upstream has answered

                kill_hard(process)
                await transaction.rollback()
                with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                    await caller
        finally:
            await blocker.close()

        # The refresh token the run spent is dead upstream; the new one exists only in the run.
        assert not token_server.state.is_active(spent_refresh)
        assert await secret_value(client, "REFRESH_TOKEN") == spent_refresh
        run = (await client.get(f"/v1/runs/{run_id}")).json()
        assert (run["status"], run["recoverable"]) == ("storing", True)

        for _ in range(50):  # PostgreSQL ends the dead process's sessions within moments
            result = invoke("runs", "recover", run_id, env=env)
            if "may still be in flight" not in result.stderr:
                break
            await asyncio.sleep(0.2)
        assert result.returncode == 0, result.stderr
        assert f"run {run_id} recovered" in result.stdout
        assert "REFRESH_TOKEN: version 3" in result.stdout  # created, rotated, recovered
        refresh = await secret_value(client, "REFRESH_TOKEN")
        assert token_server.state.is_active(refresh)
        assert token_server.state.is_active(await secret_value(client, "ACCESS_TOKEN"))
        assert refresh not in result.stdout + result.stderr
        assert (await client.get(f"/v1/runs/{run_id}")).json()["status"] == "recovered"
        response = await client.get("/refresh/ACCESS_TOKEN")
        assert response.status_code == 200, response.text
