"""Single flight: a burst of refreshes costs one token request, in one process and across three.

The token server answers after 300 ms, so every caller of a burst arrives while the first run is
still waiting for it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from app.auth.actor import Actor
from app.config import Settings
from app.db import create_lock_engine
from app.errors import Conflict
from app.middleware import RequestIdMiddleware, received_at
from app.runs.flights import advisory_key, endpoint_turn
from app.runs.runner import Runner, RunOutcome
from tests.auth.conftest import Callers
from tests.auth.conftest import callers as callers  # the fixture, for this module
from tests.burst import burst_get
from tests.conftest import TokenServer, secret_value, setup_oauth, wait_at_gate
from tests.processes import replica_env, server_process

BURST = 100


def assert_one_rotation(responses: list[httpx.Response], server: TokenServer) -> None:
    """Every caller succeeded with the same run, and the token server saw one clean request."""
    assert Counter(r.status_code for r in responses) == {200: len(responses)}, [
        r.text for r in responses if r.status_code != 200
    ][:3]
    assert server.state.token_requests == 1, server.state.requests
    assert len({r.json()["run_id"] for r in responses}) == 1, Counter(
        (r.json()["run_id"], r.json()["adopted"], r.json()["coalesced"]) for r in responses
    )
    assert {r.json()["version"] for r in responses} == {1}
    assert server.state.token_requests == 1
    assert [r["error"] for r in server.state.requests] == [None]


class TestInOneProcess:
    async def test_a_burst_of_refreshes_costs_one_token_request(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await setup_oauth(client, token_server)
        token_server.state.latency_seconds = 0.3

        responses = await asyncio.gather(
            *(client.get("/refresh/ACCESS_TOKEN") for _ in range(BURST))
        )

        assert_one_rotation(list(responses), token_server)
        assert sum(r.json()["coalesced"] for r in responses) == BURST - 1
        assert token_server.state.is_active(await secret_value(client, "ACCESS_TOKEN"))
        assert token_server.state.is_active(await secret_value(client, "REFRESH_TOKEN"))

    async def test_a_caller_without_the_update_permission_does_not_share_the_run(
        self, client: httpx.AsyncClient, token_server: TokenServer, callers: Callers
    ) -> None:
        await setup_oauth(client, token_server)
        token_server.state.latency_seconds = 0.3
        runner_only = await callers.holding("services.run:oauth")

        async def late() -> httpx.Response:
            await asyncio.sleep(0.1)  # the owner's run is in flight
            return await runner_only.get("/refresh/ACCESS_TOKEN")

        owner, refused = await asyncio.gather(client.get("/refresh/ACCESS_TOKEN"), late())

        assert owner.status_code == 200, owner.text
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["type"] == "permission_denied"
        assert refused.json()["run_id"] != owner.json()["run_id"]
        assert token_server.state.token_requests == 1

    async def test_runs_after_the_burst_refresh_again(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await setup_oauth(client, token_server)

        first = await client.get("/refresh/ACCESS_TOKEN")
        second = await client.get("/refresh/ACCESS_TOKEN")

        assert (first.json()["version"], second.json()["version"]) == (1, 2)
        assert second.json()["coalesced"] is False
        assert token_server.state.token_requests == 2

    async def test_a_caller_that_goes_away_does_not_stop_the_run(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        """The upstream may already have rotated the token: the run must store it anyway."""
        await setup_oauth(client, token_server)
        gate = threading.Event()
        token_server.state.gate = gate

        caller = asyncio.ensure_future(client.get("/refresh/ACCESS_TOKEN"))
        await wait_at_gate(token_server, 1)  # the run's token request is at the upstream
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        token_server.state.gate = None
        gate.set()
        # The upstream answers now and the run stores; under load storing can take a while.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if await secret_value(client, "ACCESS_TOKEN") is not None:
                break
            await asyncio.sleep(0.05)

        assert token_server.state.token_requests == 1
        assert token_server.state.is_active(await secret_value(client, "REFRESH_TOKEN"))
        assert token_server.state.is_active(await secret_value(client, "ACCESS_TOKEN"))


OWNER = Actor(kind="system", name="test", permissions=frozenset({"*"}))


async def refresh(
    app: FastAPI, actor: Actor = OWNER, received_at: float | None = None
) -> RunOutcome:
    """Run the canonical refresh through the app's runner, as `/refresh/ACCESS_TOKEN` does."""
    runner: Runner = app.state.runner
    return await runner.run_endpoint(
        "oauth", "refresh-token", actor=actor, trigger="refresh", received_at=received_at
    )


class TestCallersQueuedBehindARun:
    """A burst larger than the server can take in while the run is in the air: requests that
    arrived during the run but are served after it landed share it too."""

    async def test_a_request_that_arrived_before_the_run_landed_shares_it(
        self, app: FastAPI, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await setup_oauth(client, token_server)
        arrived = time.monotonic()  # a request that arrives now...
        first = await refresh(app)

        queued = await refresh(app, received_at=arrived)  # ...and is served after it landed

        assert first.status == queued.status == "succeeded"
        assert queued.run_id == first.run_id
        assert queued.coalesced is True
        assert token_server.state.token_requests == 1

    async def test_a_request_that_arrived_after_the_run_landed_refreshes_again(
        self, app: FastAPI, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await setup_oauth(client, token_server)
        first = await refresh(app)

        later = await refresh(app, received_at=time.monotonic())

        assert later.run_id != first.run_id
        assert later.coalesced is False
        assert token_server.state.token_requests == 2

    async def test_a_queued_caller_without_the_update_permission_runs_alone(
        self, app: FastAPI, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await setup_oauth(client, token_server)
        runner_only = Actor(
            kind="service_account", name="r", permissions=frozenset({"services.run:oauth"})
        )
        arrived = time.monotonic()
        first = await refresh(app)

        refused = await refresh(app, runner_only, received_at=arrived)

        assert refused.run_id != first.run_id
        assert refused.http_status == 403
        assert token_server.state.token_requests == 1

    async def test_the_middleware_notes_when_each_request_arrived(self) -> None:
        seen: list[float | None] = []

        async def inner(scope: Any, receive: Any, send: Any) -> None:
            seen.append(received_at(scope))
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        before = time.monotonic()
        transport = httpx.ASGITransport(app=RequestIdMiddleware(inner))
        async with httpx.AsyncClient(transport=transport, base_url="http://t.test") as http:
            assert (await http.get("/refresh/X")).status_code == 204
        after = time.monotonic()

        assert len(seen) == 1 and seen[0] is not None
        assert before <= seen[0] <= after


# Replicas and row locks need PostgreSQL: only that backend of `database_url`.
@pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
class TestAcrossReplicas:
    async def test_three_replicas_on_postgresql_cost_one_token_request(
        self,
        client: httpx.AsyncClient,
        token_server: TokenServer,
        settings: Settings,
        database_url: str,
        tmp_path: Path,
    ) -> None:
        await setup_oauth(client, token_server)
        token_server.state.latency_seconds = 0.3
        env = replica_env(settings, database_url, str(tmp_path))
        with ExitStack() as stack:
            bases = [stack.enter_context(server_process(env, "--no-migrate"))[0] for _ in range(3)]
            responses = await burst_get(
                [f"{bases[i % 3]}/refresh/ACCESS_TOKEN" for i in range(BURST)],
                {"Authorization": client.headers["Authorization"]},
            )

        assert Counter(r.status for r in responses) == {200: BURST}, responses[:3]
        assert token_server.state.token_requests == 1, token_server.state.requests
        assert [r["error"] for r in token_server.state.requests] == [None]
        assert len({r.body["run_id"] for r in responses}) == 1
        assert {r.body["version"] for r in responses} == {1}
        # Two replicas waited for the advisory lock and adopted the first one's run.
        assert any(r.body["adopted"] for r in responses)
        assert token_server.state.is_active(await secret_value(client, "ACCESS_TOKEN"))
        assert token_server.state.is_active(await secret_value(client, "REFRESH_TOKEN"))

    async def test_a_turn_held_past_the_deadline_elsewhere_is_refused_in_time(
        self, app: FastAPI, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        """Another replica's run holds the endpoint's turn: this one waits at most the run
        deadline (the lock pool's lock_timeout), then answers 409 and calls nothing."""
        await setup_oauth(client, token_server)
        settings = app.state.settings.model_copy(update={"run_deadline_seconds": 1.0})
        lock_engine = create_lock_engine(app.state.engine, settings.run_deadline_seconds)
        assert lock_engine is not None
        runner = Runner(
            app.state.session_factory,
            app.state.keyring,
            app.state.runner.outbound,
            settings,
            lock_engine=lock_engine,
        )
        actor = Actor(kind="system", name="replica", permissions=frozenset({"*"}))
        key = advisory_key(endpoint_turn("oauth", "refresh-token"))
        try:
            async with app.state.engine.connect() as holder:
                await holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
                started = time.monotonic()
                with pytest.raises(Conflict, match="still running on another replica after 1 s"):
                    await asyncio.wait_for(
                        runner.run_endpoint(
                            "oauth", "refresh-token", actor=actor, trigger="refresh"
                        ),
                        timeout=10,
                    )
                waited = time.monotonic() - started
                await holder.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            assert 0.9 <= waited < 5, waited
            assert token_server.state.token_requests == 0
            # With the turn free again, the same runner runs.
            outcome = await runner.run_endpoint(
                "oauth", "refresh-token", actor=actor, trigger="refresh"
            )
            assert outcome.status == "succeeded", outcome.error_body
        finally:
            await lock_engine.dispose()
