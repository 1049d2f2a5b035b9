"""Error classes and retries: transient and rate-limited failures are retried, permanent never.

Each case runs `GET /refresh/ACCESS_TOKEN` against the loopback token server, whose fault queue
answers the next requests with chosen faults (`queue_faults`) and then normally. A refresh is
retried after a 5xx or a timeout only when its policy says the server has a reuse grace period
(`REUSE_GRACE_RETRY`); what happens without it is tests/runs/test_rotation_safety.py.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from app.backoff import parse_retry_after
from app.errors import classify_status
from app.pipeline.rotation import REUSE_GRACE_RETRY
from tests.conftest import TokenServer, secret_value, setup_oauth


async def refresh_with_policy(
    client: httpx.AsyncClient, server: TokenServer, retry: dict[str, Any]
) -> None:
    """The canonical refresh with this retry policy on its web_request."""
    await setup_oauth(client, server)
    service = (await client.get("/v1/services/oauth")).json()
    service["endpoints"][0]["action"][1]["retry"] = retry
    response = await client.put(
        "/v1/services/oauth",
        json={key: service[key] for key in ("name", "variables", "endpoints")},
    )
    assert response.status_code == 200, response.text


async def last_run(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    """A run's detail from the log (every endpoint of `setup_oauth` logs its runs)."""
    response = await client.get(f"/v1/runs/{run_id}")
    assert response.status_code == 200, response.text
    detail: dict[str, Any] = response.json()
    return detail


# The retry policy of `canonical_action`, for a server that tolerates a retried refresh.
GRACE_POLICY = {
    "attempts": 3,
    "base_delay_seconds": 0.05,
    "max_delay_seconds": 5,
    **REUSE_GRACE_RETRY,
}


def web_request(run: dict[str, Any]) -> dict[str, Any]:
    """The trace entry of the run's token request."""
    entry: dict[str, Any] = next(e for e in run["trace"] if e["type"] == "web_request")
    return entry


class TestTransientFailures:
    @pytest.mark.parametrize("fault", ["http_503", "http_500"])
    async def test_server_error_then_success_is_retried(
        self, client: httpx.AsyncClient, token_server: TokenServer, fault: str
    ) -> None:
        await refresh_with_policy(client, token_server, GRACE_POLICY)
        token_server.state.retry_after_seconds = None
        token_server.state.queue_faults(fault)

        response = await client.get("/refresh/ACCESS_TOKEN")

        assert response.status_code == 200, response.text
        assert token_server.state.token_requests == 2
        assert token_server.state.is_active(await secret_value(client, "ACCESS_TOKEN"))
        retries = web_request(await last_run(client, response.json()["run_id"]))["retries"]
        assert [(r["status"], r["error_class"]) for r in retries] == [
            (int(fault.removeprefix("http_")), "transient")
        ]

    async def test_timeout_then_success_is_retried(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await refresh_with_policy(client, token_server, GRACE_POLICY)
        token_server.state.hang_seconds = 1.5  # the node's timeout is 1 s
        token_server.state.queue_faults("hang")

        response = await client.get("/refresh/ACCESS_TOKEN")

        assert response.status_code == 200, response.text
        retries = web_request(await last_run(client, response.json()["run_id"]))["retries"]
        assert [r["error"] for r in retries] == ["upstream_timeout"]

    async def test_attempts_are_bounded_by_the_policy(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await refresh_with_policy(
            client, token_server, {"attempts": 4, "base_delay_seconds": 0.01, **REUSE_GRACE_RETRY}
        )
        token_server.state.retry_after_seconds = None
        token_server.state.fault = "http_503"

        response = await client.get("/refresh/ACCESS_TOKEN")

        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert error["error_class"] == "transient"
        assert error["attempts"] == 4
        assert token_server.state.token_requests == 4
        metadata = (await client.get("/v1/secrets/ACCESS_TOKEN")).json()
        assert metadata["status"] == "failing"
        assert metadata["last_error"].startswith("upstream_error (transient): ")

    async def test_one_attempt_turns_retrying_off(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await refresh_with_policy(client, token_server, {"attempts": 1})
        token_server.state.queue_faults("http_503")

        response = await client.get("/refresh/ACCESS_TOKEN")

        assert response.status_code == 502, response.text
        assert token_server.state.token_requests == 1

    async def test_backoff_grows_and_stays_under_the_cap(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await refresh_with_policy(
            client,
            token_server,
            {
                "attempts": 4,
                "base_delay_seconds": 0.1,
                "max_delay_seconds": 0.3,
                **REUSE_GRACE_RETRY,
            },
        )
        token_server.state.retry_after_seconds = None
        token_server.state.queue_faults("http_503", "http_503", "http_503")

        response = await client.get("/refresh/ACCESS_TOKEN")

        assert response.status_code == 200, response.text
        delays = [
            r["delay_seconds"]
            for r in web_request(await last_run(client, response.json()["run_id"]))["retries"]
        ]
        # Equal jitter: each delay lies between half and all of min(cap, base * 2^n).
        for delay, ceiling in zip(delays, [0.1, 0.2, 0.3], strict=True):
            assert ceiling / 2 <= delay <= ceiling

    async def test_run_deadline_stops_retries(
        self, client: httpx.AsyncClient, token_server: TokenServer, app: Any
    ) -> None:
        await refresh_with_policy(
            client,
            token_server,
            {"attempts": 5, "base_delay_seconds": 2, "max_delay_seconds": 2, **REUSE_GRACE_RETRY},
        )
        app.state.runner.settings = app.state.settings.model_copy(
            update={"run_deadline_seconds": 1.0}
        )
        token_server.state.retry_after_seconds = None
        token_server.state.fault = "http_503"

        started = time.monotonic()
        response = await client.get("/refresh/ACCESS_TOKEN")

        assert time.monotonic() - started < 1.5
        assert response.status_code == 502, response.text
        assert "deadline" in response.json()["error"]["message"]
        assert token_server.state.token_requests == 1


class TestRateLimiting:
    async def test_429_waits_for_retry_after(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await setup_oauth(client, token_server)
        token_server.state.retry_after_seconds = 1
        token_server.state.queue_faults("rate_limited")

        started = time.monotonic()
        response = await client.get("/refresh/ACCESS_TOKEN")

        assert response.status_code == 200, response.text
        assert time.monotonic() - started >= 1.0
        assert token_server.state.token_requests == 2
        retries = web_request(await last_run(client, response.json()["run_id"]))["retries"]
        assert retries == [
            {
                "attempt": 1,
                "error": "upstream_error",
                "error_class": "rate_limited",
                "status": 429,
                "reached_upstream": True,
                "delay_seconds": 1.0,
            }
        ]

    async def test_retry_after_beyond_the_cap_is_not_waited_for(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await setup_oauth(client, token_server)  # the policy's cap is 5 s
        token_server.state.retry_after_seconds = 60
        token_server.state.fault = "rate_limited"

        started = time.monotonic()
        response = await client.get("/refresh/ACCESS_TOKEN")

        assert time.monotonic() - started < 2
        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert error["error_class"] == "rate_limited"
        assert "retry after 60 s" in error["message"]
        assert token_server.state.token_requests == 1
        metadata = (await client.get("/v1/secrets/ACCESS_TOKEN")).json()
        assert metadata["last_error"].startswith("upstream_error (rate_limited): ")


class TestPermanentFailures:
    @pytest.mark.parametrize(
        ("fault", "oauth_error"),
        [("invalid_client", "invalid_client"), ("invalid_grant", "invalid_grant")],
    )
    async def test_oauth_errors_are_never_retried(
        self, client: httpx.AsyncClient, token_server: TokenServer, fault: str, oauth_error: str
    ) -> None:
        await setup_oauth(client, token_server)
        token_server.state.fault = fault

        response = await client.get("/refresh/ACCESS_TOKEN")

        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert error["error_class"] == "permanent"
        assert error["oauth_error"] == oauth_error
        assert "attempts" not in error
        assert token_server.state.token_requests == 1


class TestClassification:
    @pytest.mark.parametrize(
        ("status", "oauth_error", "expected"),
        [
            (400, "invalid_grant", "permanent"),
            (401, "invalid_client", "permanent"),
            (400, "unauthorized_client", "permanent"),
            (400, "unsupported_grant_type", "permanent"),
            (400, "invalid_scope", "permanent"),
            (400, "invalid_request", "permanent"),
            (503, "invalid_request", "permanent"),
            (403, None, "permanent"),
            (404, None, "permanent"),
            (408, None, "transient"),
            (429, None, "rate_limited"),
            (500, None, "transient"),
            (502, None, "transient"),
            (503, "temporarily_unavailable", "transient"),
        ],
    )
    def test_status_and_oauth_error_decide_the_class(
        self, status: int, oauth_error: str | None, expected: str
    ) -> None:
        assert classify_status(status, oauth_error) == expected

    @pytest.mark.parametrize(
        ("header", "expected"),
        [
            ("5", 5.0),
            (" 0 ", 0.0),
            ("Thu, 01 Jan 1970 00:01:40 GMT", 40.0),  # now = 60: 100 - 60
            ("Thu, 01 Jan 1970 00:00:10 GMT", 0.0),  # in the past: at once
            ("-3", None),
            ("soon", None),
            ("1.5", None),
            (None, None),
        ],
    )
    def test_retry_after_is_seconds_or_an_http_date(
        self, header: str | None, expected: float | None
    ) -> None:
        assert parse_retry_after(header, now=60.0) == expected
