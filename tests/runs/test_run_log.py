"""The run log: what is recorded, how it is filtered, and that traces never carry values."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    TokenServer,
    secret_value,
    setup_oauth,
    store_action_unchecked,
)


def endpoint(readable_id: str, action: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """An endpoint body for `POST /v1/services`."""
    return {"readable_id": readable_id, "name": readable_id, "action": action, **fields}


async def create_service(client: httpx.AsyncClient, slug: str, *endpoints: dict[str, Any]) -> None:
    """Create a service, failing the test on any error."""
    body = {"slug": slug, "name": slug, "endpoints": list(endpoints)}
    response = await client.post("/v1/services", json=body)
    assert response.status_code == 201, response.text


async def run(client: httpx.AsyncClient, path: str) -> dict[str, Any]:
    """Run an endpoint and return the answer."""
    response = await client.get(path)
    assert response.status_code < 500, response.text
    body: dict[str, Any] = response.json()
    return body


async def log(client: httpx.AsyncClient, **filters: Any) -> list[str]:
    """The ids of the runs the log lists for these filters, newest first."""
    response = await client.get("/v1/runs", params=filters)
    assert response.status_code == 200, response.text
    return [entry["id"] for entry in response.json()]


# filters -> the runs of the `runs` fixture they select, newest first
FILTER_CASES: list[tuple[dict[str, Any], list[str]]] = [
    ({"service": "oauth"}, ["refresh"]),
    ({"service": "tools"}, ["boom", "ping"]),
    ({"service": "nothing"}, []),
    ({"endpoint": "ping"}, ["ping"]),
    ({"endpoint": "refresh-token"}, ["refresh"]),
    ({"secret": "ACCESS_TOKEN"}, ["refresh"]),
    ({"secret": "REFRESH_TOKEN"}, ["refresh"]),
    ({"secret": "CLIENT_SECRET"}, []),
    ({"status": "failed"}, ["boom"]),
    ({"status": "succeeded"}, ["ping", "refresh"]),
    ({"trigger": "api"}, ["boom", "ping"]),
    ({"trigger": "refresh"}, ["refresh"]),
    ({"trigger": "schedule"}, []),
    ({"service": "tools", "status": "succeeded"}, ["ping"]),
    ({"limit": 1}, ["boom"]),
    ({"trigger": "api", "limit": 1}, ["boom"]),
]
BAD_FILTERS: list[dict[str, Any]] = [
    {"status": "pending"},
    {"trigger": "cron"},
    {"limit": 0},
    {"limit": 501},
    {"secret": "not a name"},
    {"service": "UPPER"},
]


class TestFilters:
    @pytest.fixture
    async def runs(self, client: httpx.AsyncClient, token_server: TokenServer) -> dict[str, str]:
        """Three logged runs: a refresh (oauth), a successful and a failed API run (tools)."""
        await setup_oauth(client, token_server)
        await create_service(
            client,
            "tools",
            endpoint("ping", [{"type": "end_execution", "response": "pong"}], enable_log=True),
            endpoint("boom", [{"type": "throw", "status": 418, "message": "no coffee"}]),
        )
        refresh = await run(client, "/refresh/ACCESS_TOKEN")
        ping = await run(client, "/api/services/tools/ping")
        boom = await run(client, "/api/services/tools/boom")
        assert [refresh["status"], ping["status"], boom["status"]] == [
            "succeeded",
            "succeeded",
            "failed",
        ]
        return {"refresh": refresh["run_id"], "ping": ping["run_id"], "boom": boom["run_id"]}

    async def test_unfiltered_log_lists_newest_first(
        self, client: httpx.AsyncClient, runs: dict[str, str]
    ) -> None:
        assert await log(client) == [runs["boom"], runs["ping"], runs["refresh"]]

    async def test_each_filter_selects_its_runs(
        self, client: httpx.AsyncClient, runs: dict[str, str]
    ) -> None:
        for filters, expected in FILTER_CASES:
            selected = await log(client, **filters)
            assert selected == [runs[name] for name in expected], filters

    async def test_bad_filter_is_422_naming_it(self, client: httpx.AsyncClient) -> None:
        for filters in BAD_FILTERS:
            response = await client.get("/v1/runs", params=filters)

            assert response.status_code == 422, response.text
            error = response.json()["error"]
            assert error["type"] == "validation_error"
            assert [problem["path"] for problem in error["errors"]] == list(filters)

    async def test_summary_fields(self, client: httpx.AsyncClient, runs: dict[str, str]) -> None:
        entry = (await client.get("/v1/runs", params={"endpoint": "boom"})).json()[0]

        assert entry["service"] == "tools"
        assert entry["endpoint"] == "boom"
        assert entry["trigger"] == "api"
        assert entry["actor"] == "user:owner@example.com"
        assert entry["status"] == "failed"
        assert entry["http_status"] == 418
        assert entry["error_type"] == "thrown"
        assert entry["error_message"] == "no coffee"
        assert entry["secrets"] == []
        assert entry["started_at"].endswith("Z") and entry["finished_at"].endswith("Z")
        assert entry["duration_ms"] >= 0
        assert "trace" not in entry


class TestRunDetail:
    async def test_unknown_run_is_404_explaining_what_is_kept(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.get("/v1/runs/00000000-0000-4000-8000-000000000000")

        assert response.status_code == 404, response.text
        error = response.json()["error"]
        assert error["type"] == "not_found"
        assert "00000000-0000-4000-8000-000000000000" in error["message"]
        assert "enable_log" in error["message"]

    async def test_malformed_run_id_is_422(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/v1/runs/not%20a%20run")

        assert response.status_code == 422, response.text
        assert response.json()["error"]["errors"][0]["path"] == "run_id"


class TestWhatIsRecorded:
    async def test_successful_run_is_logged_only_with_enable_log(
        self, client: httpx.AsyncClient
    ) -> None:
        action = [{"type": "end_execution", "response": {"ok": True}}]
        await create_service(
            client,
            "tools",
            endpoint("quiet", action),
            endpoint("loud", action, enable_log=True),
        )

        quiet = await run(client, "/api/services/tools/quiet")
        loud = await run(client, "/api/services/tools/loud")

        assert quiet["status"] == loud["status"] == "succeeded"
        assert quiet["response"] == {"ok": True}
        assert await log(client) == [loud["run_id"]]
        assert (await client.get(f"/v1/runs/{quiet['run_id']}")).status_code == 404
        assert (await client.get(f"/v1/runs/{loud['run_id']}")).status_code == 200

    async def test_failed_run_is_logged_without_enable_log(self, client: httpx.AsyncClient) -> None:
        await create_service(
            client, "tools", endpoint("boom", [{"type": "throw", "status": 409, "message": "busy"}])
        )

        boom = await run(client, "/api/services/tools/boom")

        assert boom["status"] == "failed"
        assert await log(client) == [boom["run_id"]]

    async def test_failure_whose_message_holds_a_nul_is_still_logged(
        self, client: httpx.AsyncClient
    ) -> None:
        # Messages quote what callers and upstreams send; PostgreSQL text can't hold NUL.
        throw = {"type": "throw", "status": 400, "message": "bad {{ request.query.m }}"}
        await create_service(client, "tools", endpoint("boom", [throw]))

        response = await client.get("/api/services/tools/boom", params={"m": "a\x00b"})

        assert response.status_code == 400, response.text
        assert response.json()["error"]["message"] == "bad a\x00b"
        logged = (await client.get(f"/v1/runs/{response.json()['run_id']}")).json()
        assert logged["error_message"] == "bad a\ufffdb"

    async def test_successful_refresh_without_enable_log_is_not_logged(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await setup_oauth(client, token_server, enable_log=False)

        response = await client.get("/refresh/ACCESS_TOKEN")

        assert response.status_code == 200, response.text
        assert await log(client) == []


class TestTrace:
    async def test_entries_carry_path_type_outcome_and_duration(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await setup_oauth(client, token_server)
        run_id = (await run(client, "/refresh/ACCESS_TOKEN"))["run_id"]

        trace = (await client.get(f"/v1/runs/{run_id}")).json()["trace"]

        assert [(entry["path"], entry["type"]) for entry in trace] == [
            ("action[0]", "update_object"),
            ("action[1]", "web_request"),
            ("action[2]", "if"),
            ("action[2].then[0]", "update_secret"),
            ("action[2].then[1]", "if"),
            ("action[2].then[1].then[0]", "update_secret"),
        ]
        for entry in trace:
            assert entry["outcome"] == "ok"
            assert isinstance(entry["duration_ms"], float | int) and entry["duration_ms"] >= 0

    async def test_trace_and_answer_never_carry_values(
        self, app: FastAPI, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        setup = await setup_oauth(client, token_server)
        # An action that logs and returns secrets is refused when saved (tests/services); one
        # saved before that rule still never shows them.
        await store_action_unchecked(
            app,
            [
                {"type": "log", "message": "refresh is {{ secrets.REFRESH_TOKEN }}"},
                {"type": "log", "message": "client is {{ secrets.CLIENT_SECRET }}"},
                {
                    "type": "end_execution",
                    "response": {
                        "id": "{{ secrets.CLIENT_ID }}",
                        "nested": ["{{ secrets.ACCESS_TOKEN }}"],
                    },
                },
            ],
            slug="leaky",
            readable_id="echo",
        )
        refresh = await run(client, "/refresh/ACCESS_TOKEN")
        canaries = [
            CLIENT_ID,
            CLIENT_SECRET,
            setup.refresh_token,
            await secret_value(client, "ACCESS_TOKEN"),
            await secret_value(client, "REFRESH_TOKEN"),
        ]

        echo = await client.get("/api/services/leaky/echo")

        assert echo.status_code == 200, echo.text
        assert echo.json()["response"] == {"id": "[REDACTED]", "nested": ["[REDACTED]"]}
        texts = {"echo": echo.text, "log": (await client.get("/v1/runs")).text}
        for run_id in (refresh["run_id"], echo.json()["run_id"]):
            texts[run_id] = (await client.get(f"/v1/runs/{run_id}")).text
        for where, text in texts.items():
            for canary in canaries:
                assert canary not in text, f"a secret value leaked into {where}"
        trace = (await client.get(f"/v1/runs/{echo.json()['run_id']}")).json()["trace"]
        assert trace[0]["message"] == "refresh is [REDACTED]"
        assert trace[1]["message"] == "client is [REDACTED]"
