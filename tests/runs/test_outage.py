"""A database outage, on a private PostgreSQL cluster the test stops and starts: every route and
fast path answers 503 `database_unavailable` with Retry-After (never a 500), and a refresh whose
database went away after the token server answered loses no rotation: the answer waits in the
spool, is written when the database is back, and no refresh spends the old grant meanwhile."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.migrate import upgrade_database
from tests.conftest import TokenServer, create_secret, secret_value, setup_oauth, wait_at_gate
from tests.private_postgres import PrivateCluster, private_cluster
from tests.processes import replica_env, run_cli

CANARY = "plain-canary-value-3e9d1f"


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    """One private cluster per module (per xdist worker): initdb costs a second or two."""
    with private_cluster() as started:
        yield started


@pytest.fixture
def database_url(cluster: PrivateCluster) -> str:
    """A fresh migrated database on the private cluster (replaces the shared backends)."""
    cluster.start_if_stopped()
    name = f"outage_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        connection = await asyncpg.connect(cluster.url, timeout=5)
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()

    asyncio.run(create())
    url = cluster.url.rsplit("/", 1)[0] + f"/{name}"
    upgrade_database(url)
    return url


def assert_unavailable(response: httpx.Response) -> None:
    """503 `database_unavailable` with Retry-After, in the error shape."""
    assert response.status_code == 503, (response.request.url, response.text)
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"]["type"] == "database_unavailable", response.text


async def until(condition, seconds: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    """Wait until `await condition()` is true."""
    for _ in range(int(seconds / 0.1)):
        if await condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the condition did not hold in time")


class TestOutageAnswers503:
    async def test_reads_refreshes_and_lists_answer_503_on_routes_and_fast_paths(
        self, client: httpx.AsyncClient, token_server: TokenServer, cluster: PrivateCluster
    ) -> None:
        await setup_oauth(client, token_server)
        await create_secret(client, "PLAIN", CANARY)
        warm = await client.get("/refresh/ACCESS_TOKEN")  # the actor cache knows the owner now
        assert warm.status_code == 200, warm.text
        app = client._transport.app  # type: ignore[attr-defined]
        requests = token_server.state.token_requests

        cluster.stop()
        try:
            for fast_paths in (True, False):
                app.state.fast_paths = fast_paths
                assert_unavailable(await client.get("/v1/secrets/PLAIN/value"))
                assert_unavailable(await client.get("/refresh/ACCESS_TOKEN"))
                assert_unavailable(await client.get("/refresh/ACCESS_TOKEN?force=true"))
                assert_unavailable(await client.get("/v1/secrets"))
                assert_unavailable(await client.get("/v1/runs"))
                assert_unavailable(await client.post("/api/services/oauth/refresh-token"))
        finally:
            cluster.start()
        assert token_server.state.token_requests == requests  # nothing was called
        app.state.fast_paths = True

        assert (await client.get("/v1/secrets")).status_code == 200
        assert await secret_value(client, "PLAIN") == CANARY


class TestDatabaseStoppedMidRefresh:
    async def test_the_rotation_is_spooled_written_when_back_and_the_old_grant_never_spent(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        cluster: PrivateCluster,
        tmp_path: Path,
    ) -> None:
        await setup_oauth(client, token_server)
        assert (await client.get("/refresh/ACCESS_TOKEN")).status_code == 200
        old_refresh = await secret_value(client, "REFRESH_TOKEN")
        token_server.state.reset_counters()

        gate = threading.Event()
        token_server.state.gate = gate
        refreshing = asyncio.create_task(client.get("/refresh/ACCESS_TOKEN"))
        await wait_at_gate(token_server, 1)
        cluster.stop()  # as if it crashed, while the token server holds the answer
        token_server.state.gate = None
        gate.set()
        response = await refreshing

        # A clear 503 that says where the answer is, never a 500; the spool holds it encrypted.
        assert_unavailable(response)
        assert "spool" in response.json()["error"]["message"]
        assert token_server.state.token_requests == 1
        assert not token_server.state.is_active(old_refresh)  # spent: only the answer has the new
        spooled = list((tmp_path / "spool").glob("*.answer"))
        assert len(spooled) == 1
        text = spooled[0].read_text()
        assert old_refresh not in text and "refresh_token" not in text

        # While the database is down no refresh presents the spent grant.
        again = await client.get("/refresh/ACCESS_TOKEN")
        assert again.status_code == 503, again.text
        assert token_server.state.token_requests == 1

        # A copy, as if a second process found it too: replaying twice writes once.
        copy = tmp_path / "copy" / "spool"
        copy.mkdir(parents=True)
        (copy / spooled[0].name).write_bytes(spooled[0].read_bytes())

        cluster.start()

        run_id = response.json()["run_id"]

        async def replayed() -> bool:
            run = await client.get(f"/v1/runs/{run_id}")
            return run.status_code == 200 and run.json()["status"] == "recovered"

        await until(replayed)  # the runtime's replay task, with no request to prompt it
        assert not list((tmp_path / "spool").glob("*.answer"))
        new_refresh = await secret_value(client, "REFRESH_TOKEN")
        assert new_refresh != old_refresh
        assert token_server.state.is_active(new_refresh)
        assert token_server.state.is_active(await secret_value(client, "ACCESS_TOKEN"))

        versions = (await client.get("/v1/secrets/REFRESH_TOKEN/versions")).json()
        settings = client._transport.app.state.settings  # type: ignore[attr-defined]
        env = replica_env(settings, settings.resolved_database_url, str(tmp_path / "copy"))
        again_replayed = run_cli("runs", "recover", "--spool", env=env)
        assert again_replayed.returncode == 0, again_replayed.stderr
        assert f"run {run_id} was already written" in again_replayed.stdout
        assert not list(copy.glob("*.answer"))
        assert (await client.get("/v1/secrets/REFRESH_TOKEN/versions")).json() == versions
        assert new_refresh not in again_replayed.stdout + again_replayed.stderr

        # The next refresh presents the NEW refresh token: the server would revoke the family
        # on reuse of the old one (invalid_grant), so success proves it.
        after = await client.get("/refresh/ACCESS_TOKEN")
        assert after.status_code == 200, after.text
        assert token_server.state.is_active(await secret_value(client, "REFRESH_TOKEN"))

    async def test_a_refresh_as_soon_as_the_database_is_back_writes_the_spooled_answer_first(
        self, client: httpx.AsyncClient, token_server: TokenServer, cluster: PrivateCluster
    ) -> None:
        await setup_oauth(client, token_server)
        gate = threading.Event()
        token_server.state.gate = gate
        refreshing = asyncio.create_task(client.get("/refresh/ACCESS_TOKEN"))
        await wait_at_gate(token_server, 1)
        cluster.stop()
        token_server.state.gate = None
        gate.set()
        assert_unavailable(await refreshing)
        cluster.start()

        # Whether the replay task or this refresh writes the spooled answer, the refresh
        # presents the rotated grant: the old one would revoke the family (invalid_grant).
        response = await client.get("/refresh/ACCESS_TOKEN")
        assert response.status_code == 200, response.text
        assert token_server.state.token_requests == 2
        assert token_server.state.is_active(await secret_value(client, "REFRESH_TOKEN"))
        versions = (await client.get("/v1/secrets/REFRESH_TOKEN/versions")).json()
        assert [v["source"] for v in versions] == ["run", "recovery", "create"]
