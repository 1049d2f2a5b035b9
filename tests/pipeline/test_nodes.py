"""Every node through the real API: actions call a real echo server on loopback."""

from __future__ import annotations

import base64
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import create_secret, secret_value
from tests.pipeline.conftest import Echo, create_service, run_action, run_trace, run_unchecked

CANARY = "canary-7d1f3e9a2b"


def web_request(echo: Echo, path: str = "/hit", **fields: Any) -> dict[str, Any]:
    """A web_request node aimed at the echo server."""
    return {"type": "web_request", "url": echo.url(path), **fields}


def end(response: Any) -> dict[str, Any]:
    """An end_execution node."""
    return {"type": "end_execution", "response": response}


async def secret_state(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    """A secret's metadata (version, expires_at, status)."""
    response = await client.get(f"/v1/secrets/{name}")
    assert response.status_code == 200, response.text
    state: dict[str, Any] = response.json()
    return state


class TestWebRequest:
    async def test_sends_method_path_query_and_headers(
        self, client: httpx.AsyncClient, echo: Echo
    ) -> None:
        action = [
            {"type": "update_object", "values": {"q": "search term", "none": None}},
            web_request(
                echo,
                "/api/items?fixed=1",
                method="PUT",
                query={
                    "q": "{{ vars.q }}",
                    "n": 5,
                    "flag": True,
                    "skip": "{{ vars.none }}",
                    "many": ["a", "b"],
                },
                headers={"X-Trace": "t-{{ run.id }}", "Accept": "application/json"},
            ),
        ]
        response = await run_action(client, action)
        assert response.status_code == 200, response.text
        [sent] = echo.state.requests
        assert sent.method == "PUT"
        assert sent.path == "/api/items"
        assert sent.query == {
            "fixed": ["1"],
            "q": ["search term"],
            "n": ["5"],
            "flag": ["true"],
            "many": ["a", "b"],
        }
        assert sent.headers["x-trace"] == f"t-{response.json()['run_id']}"
        assert sent.headers["accept"] == "application/json"

    async def test_basic_auth_from_secrets(self, client: httpx.AsyncClient, echo: Echo) -> None:
        await create_secret(client, "CLIENT_ID", "my-client", environment_specific=False)
        await create_secret(client, "CLIENT_SECRET", "my-client-secret", environment_specific=False)
        auth = {
            "type": "basic",
            "username": "{{ secrets.CLIENT_ID }}",
            "password": "{{ secrets.CLIENT_SECRET }}",
        }
        response = await run_action(client, [web_request(echo, method="POST", auth=auth)])
        assert response.status_code == 200, response.text
        expected = base64.b64encode(b"my-client:my-client-secret").decode()
        assert echo.state.requests[0].headers["authorization"] == f"Basic {expected}"

    async def test_bearer_auth_from_a_secret(self, client: httpx.AsyncClient, echo: Echo) -> None:
        await create_secret(client, "API_TOKEN", "tok-0123456789")
        auth = {"type": "bearer", "token": "{{ secrets.API_TOKEN }}"}
        # The auth setting wins over an Authorization header written by hand, in any case.
        node = web_request(echo, auth=auth, headers={"authorization": "Basic stale"})
        response = await run_action(client, [node])
        assert response.status_code == 200, response.text
        assert echo.state.requests[0].headers["authorization"] == "Bearer tok-0123456789"

    async def test_form_body(self, client: httpx.AsyncClient, echo: Echo) -> None:
        await create_secret(client, "REFRESH_TOKEN", "rt-value-1")
        body = {
            "form": {
                "grant_type": "refresh_token",
                "refresh_token": "{{ secrets.REFRESH_TOKEN }}",
                "scope": "{{ vars.undefined_scope }}",
                "n": 3,
            }
        }
        action = [
            {"type": "update_object", "values": {"undefined_scope": None}},
            web_request(echo, "/oauth/token", method="POST", body=body),
        ]
        response = await run_action(client, action)
        assert response.status_code == 200, response.text
        [sent] = echo.state.to("/oauth/token")
        assert sent.headers["content-type"] == "application/x-www-form-urlencoded"
        assert sent.form() == {
            "grant_type": ["refresh_token"],
            "refresh_token": ["rt-value-1"],
            "n": ["3"],
        }

    async def test_json_body_keeps_raw_values(self, client: httpx.AsyncClient, echo: Echo) -> None:
        body = {
            "json": {
                "count": "{{ vars.count }}",
                "label": "n={{ vars.count }}",
                "list": [1, "{{ vars.flag }}"],
                "nothing": None,
            }
        }
        action = [
            {"type": "update_object", "values": {"count": 7, "flag": False}},
            web_request(echo, method="POST", body=body),
        ]
        response = await run_action(client, action)
        assert response.status_code == 200, response.text
        [sent] = echo.state.requests
        assert sent.headers["content-type"] == "application/json"
        assert sent.json() == {"count": 7, "label": "n=7", "list": [1, False], "nothing": None}

    async def test_raw_body_with_content_type(self, client: httpx.AsyncClient, echo: Echo) -> None:
        body = {"raw": "<token id='{{ vars.id }}'/>", "content_type": "application/xml"}
        action = [
            {"type": "update_object", "values": {"id": 12}},
            web_request(echo, method="POST", body=body),
        ]
        response = await run_action(client, action)
        assert response.status_code == 200, response.text
        [sent] = echo.state.requests
        assert sent.headers["content-type"] == "application/xml"
        assert sent.text == "<token id='12'/>"

    async def test_raw_body_keeps_a_content_type_header_written_by_hand(
        self, client: httpx.AsyncClient, echo: Echo
    ) -> None:
        node = web_request(
            echo,
            method="POST",
            headers={"content-type": "text/csv"},
            body={"raw": "a,b", "content_type": "text/plain"},
        )
        response = await run_action(client, [node])
        assert response.status_code == 200, response.text
        assert echo.state.requests[0].headers["content-type"] == "text/csv"

    async def test_timeout_seconds(self, client: httpx.AsyncClient, echo: Echo) -> None:
        echo.state.reply("/slow", delay_seconds=2.0)
        started = time.monotonic()
        node = web_request(echo, "/slow", timeout_seconds=0.3, retry={"attempts": 1})
        response = await run_action(client, [node])
        assert time.monotonic() - started < 1.8
        assert response.status_code == 504, response.text
        body = response.json()
        assert body["status"] == "failed"
        assert body["error"]["type"] == "upstream_timeout"
        assert "0.3 s" in body["error"]["message"]

    async def test_result_mapping_with_nested_jsonpath(
        self, client: httpx.AsyncClient, echo: Echo
    ) -> None:
        await create_secret(client, "OUT")
        echo.state.reply(
            "/token",
            json={"data": {"token": "tok-nested-123"}, "items": [{"id": 7}, {"id": 8}]},
        )
        action = [
            web_request(
                echo,
                "/token",
                result_mapping={
                    "token": "$.data.token",
                    "first": "$.items[0].id",
                    "last": "$.items[-1:].id",
                    "absent": "$.data.nope",
                },
            ),
            web_request(
                echo,
                "/check",
                query={
                    "first": "{{ vars.first }}",
                    "last": "{{ vars.last }}",
                    "absent": "{{ vars.absent }}",
                },
            ),
            {"type": "update_secret", "secret": "OUT", "value": "{{ vars.token }}"},
        ]
        response = await run_action(client, action)
        assert response.status_code == 200, response.text
        assert echo.state.to("/check")[0].query == {"first": ["7"], "last": ["8"]}
        assert await secret_value(client, "OUT") == "tok-nested-123"

    async def test_non_2xx_fails_the_run_with_the_status(
        self, client: httpx.AsyncClient, echo: Echo
    ) -> None:
        echo.state.reply("/token", status=503, json={"message": "down"})
        action = [web_request(echo, "/token", method="POST"), web_request(echo, "/after")]
        response = await run_action(client, action)
        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert error["type"] == "upstream_error"
        assert error["message"].startswith("POST 127.0.0.1/token answered 503")
        assert echo.state.to("/after") == []

    async def test_oauth_error_code_is_in_the_message(
        self, client: httpx.AsyncClient, echo: Echo
    ) -> None:
        echo.state.reply(
            "/token",
            status=400,
            json={"error": "invalid_grant", "error_description": "refresh token was revoked"},
        )
        response = await run_action(client, [web_request(echo, "/token", method="POST")])
        assert response.status_code == 502, response.text
        assert response.json()["error"]["message"] == (
            'POST 127.0.0.1/token answered 400: invalid_grant ("refresh token was revoked")'
        )

    async def test_accept_statuses_count_as_success(
        self, client: httpx.AsyncClient, echo: Echo
    ) -> None:
        echo.state.reply("/lookup", status=404, json={"found": False})
        action = [
            web_request(
                echo, "/lookup", accept_statuses=[404], result_mapping={"found": "$.found"}
            ),
            end({"status": "{{ response.status }}", "found": "{{ vars.found }}"}),
        ]
        response = await run_action(client, action)
        assert response.status_code == 200, response.text
        assert response.json()["response"] == {"status": 404, "found": False}

    async def test_result_mapping_needs_a_json_body(
        self, client: httpx.AsyncClient, echo: Echo
    ) -> None:
        echo.state.reply("/token", content=b"<html>login</html>", content_type="text/html")
        response = await run_action(
            client, [web_request(echo, "/token", result_mapping={"t": "$.access_token"})]
        )
        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert error["type"] == "bad_upstream_response"
        assert "text/html" in error["message"]

    async def test_header_value_that_is_not_ascii_fails_before_sending(
        self, client: httpx.AsyncClient, echo: Echo
    ) -> None:
        action = [
            {"type": "update_object", "values": {"v": "caf\u00e9\nx"}},
            web_request(echo, headers={"X-Value": "{{ vars.v }}"}),
        ]
        response = await run_action(client, action)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["type"] == "binding_error"
        assert "X-Value" in error["message"]
        assert echo.state.requests == []


class TestRequestBindings:
    async def test_query_of_the_caller(self, client: httpx.AsyncClient, echo: Echo) -> None:
        action = [
            web_request(echo, query={"user": "{{ request.query.name }}"}),
            end({"hello": "{{ request.query.name }}", "missing": "{{ request.query.other }}"}),
        ]
        response = await run_action(client, action, params={"name": "alice"})
        assert response.status_code == 200, response.text
        assert response.json()["response"] == {"hello": "alice", "missing": None}
        assert echo.state.requests[0].query == {"user": ["alice"]}

    async def test_json_body_of_the_caller(self, client: httpx.AsyncClient, echo: Echo) -> None:
        action = [
            web_request(echo, method="POST", body={"json": {"id": "{{ request.body.user.id }}"}}),
            end({"id": "{{ request.body.user.id }}", "tag": "{{ request.body.tags.1 }}"}),
        ]
        response = await run_action(
            client, action, method="POST", json={"user": {"id": 42}, "tags": ["a", "b"]}
        )
        assert response.status_code == 200, response.text
        assert response.json()["response"] == {"id": 42, "tag": "b"}
        assert echo.state.requests[0].json() == {"id": 42}

    async def test_form_body_of_the_caller(self, client: httpx.AsyncClient) -> None:
        action = [end({"code": "{{ request.body.code }}"})]
        response = await run_action(client, action, method="POST", data={"code": "xyz"})
        assert response.status_code == 200, response.text
        assert response.json()["response"] == {"code": "xyz"}


class TestIf:
    ACTION = [
        {
            "type": "if",
            "condition": {"op": "equals", "left": "{{ request.query.mode }}", "right": "fast"},
            "then": [end("then")],
            "else": [end("else")],
        }
    ]

    @pytest.mark.parametrize(("mode", "branch"), [("fast", "then"), ("slow", "else")])
    async def test_runs_one_branch(self, client: httpx.AsyncClient, mode: str, branch: str) -> None:
        response = await run_action(client, self.ACTION, params={"mode": mode})
        assert response.status_code == 200, response.text
        assert response.json()["response"] == branch
        trace = await run_trace(client, response.json()["run_id"])
        assert trace[0]["branch"] == branch
        assert trace[1]["path"] == f"action[0].{branch}[0]"

    async def test_without_else_nothing_runs(self, client: httpx.AsyncClient, echo: Echo) -> None:
        action = [
            {
                "type": "if",
                "condition": {"op": "has_value", "left": "{{ request.query.x }}"},
                "then": [web_request(echo, "/then")],
            },
            web_request(echo, "/after"),
        ]
        response = await run_action(client, action)
        assert response.status_code == 200, response.text
        assert [r.path for r in echo.state.requests] == ["/after"]

    async def test_condition_type_error_fails_the_run(self, client: httpx.AsyncClient) -> None:
        await create_secret(client, "PIN", CANARY)
        action = [
            {
                "type": "if",
                "condition": {"op": "gt", "left": "{{ secrets.PIN }}", "right": 3},
                "then": [end("then")],
            }
        ]
        response = await run_action(client, action)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["type"] == "binding_error"
        assert error["message"] == "'gt' compares two numbers or two strings, got string and number"
        assert CANARY not in response.text


class TestTry:
    async def test_catches_an_upstream_error(self, client: httpx.AsyncClient, echo: Echo) -> None:
        echo.state.reply("/flaky", status=500, json={})
        action = [
            {"type": "update_object", "values": {"caught": None}},
            {
                "type": "try",
                "errors": ["upstream_error", "timeout"],
                "do": [
                    # One attempt: retries of transient failures have tests of their own.
                    web_request(echo, "/flaky", retry={"attempts": 1}),
                    web_request(echo, "/not-reached"),
                ],
                "catch": [
                    {
                        "type": "update_object",
                        "values": {"caught": "{{ error.type }}: {{ error.message }}"},
                    }
                ],
            },
            web_request(echo, "/after"),
            end({"caught": "{{ vars.caught }}", "outside": "{{ error.type }}"}),
        ]
        response = await run_action(client, action)
        assert response.status_code == 200, response.text
        assert response.json()["response"] == {
            "caught": "upstream_error: GET 127.0.0.1/flaky answered 500",
            "outside": None,
        }
        assert [r.path for r in echo.state.requests] == ["/flaky", "/after"]
        trace = await run_trace(client, response.json()["run_id"])
        assert trace[1]["caught"] == "upstream_error"
        assert trace[2] | {"duration_ms": 0} == {
            "path": "action[1].do[0]",
            "type": "web_request",
            "request": f"GET {echo.url('/flaky')}",
            "status": 500,
            "outcome": "failed",
            "duration_ms": 0,
            "error": {"type": "upstream_error", "message": "GET 127.0.0.1/flaky answered 500"},
        }

    async def test_catches_every_kind_without_errors(
        self, client: httpx.AsyncClient, echo: Echo
    ) -> None:
        action = [
            {
                "type": "try",
                "do": [{"type": "throw", "status": 418, "message": "teapot"}],
                "catch": [end({"type": "{{ error.type }}", "kind": "{{ error.kind }}"})],
            },
        ]
        response = await run_action(client, action)
        assert response.status_code == 200, response.text
        assert response.json()["response"] == {"type": "thrown", "kind": "thrown"}

    async def test_other_kinds_are_not_caught(self, client: httpx.AsyncClient, echo: Echo) -> None:
        echo.state.reply("/flaky", status=500, json={})
        action = [
            {
                "type": "try",
                "errors": ["timeout", "network"],
                "do": [web_request(echo, "/flaky", retry={"attempts": 1})],
                "catch": [web_request(echo, "/catch")],
            },
            web_request(echo, "/after"),
        ]
        response = await run_action(client, action)
        assert response.status_code == 502, response.text
        assert response.json()["error"]["type"] == "upstream_error"
        assert [r.path for r in echo.state.requests] == ["/flaky"]

    async def test_a_failing_catch_fails_the_run(self, client: httpx.AsyncClient) -> None:
        action = [
            {
                "type": "try",
                "do": [{"type": "throw", "status": 400, "message": "first"}],
                "catch": [
                    {"type": "throw", "status": 409, "message": "from catch: {{ error.message }}"}
                ],
            },
        ]
        response = await run_action(client, action)
        assert response.status_code == 409, response.text
        assert response.json()["error"]["message"] == "from catch: first"


class TestThrow:
    async def test_fails_with_its_status_and_message(
        self, client: httpx.AsyncClient, echo: Echo
    ) -> None:
        action = [
            {"type": "throw", "status": 409, "message": "no token for {{ request.query.user }}"},
            web_request(echo, "/after"),
        ]
        response = await run_action(client, action, params={"user": "bob"})
        assert response.status_code == 409, response.text
        body = response.json()
        assert body["status"] == "failed"
        assert body["error"]["type"] == "thrown"
        assert body["error"]["message"] == "no token for bob"
        assert echo.state.requests == []

    async def test_default_status_is_400(self, client: httpx.AsyncClient) -> None:
        response = await run_action(client, [{"type": "throw", "message": "nope"}])
        assert response.status_code == 400, response.text


class TestEndExecution:
    async def test_returns_its_response_and_stops(
        self, client: httpx.AsyncClient, echo: Echo
    ) -> None:
        action = [
            {"type": "update_object", "values": {"n": 1}},
            {
                "type": "if",
                "condition": {"op": "equals", "left": "{{ vars.n }}", "right": 1},
                "then": [end({"n": "{{ vars.n }}", "run": "{{ run.id }}", "list": [1, "two"]})],
            },
            web_request(echo, "/after"),
            {"type": "throw", "message": "never"},
        ]
        response = await run_action(client, action)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "succeeded"
        assert body["response"] == {"n": 1, "run": body["run_id"], "list": [1, "two"]}
        assert echo.state.requests == []
        trace = await run_trace(client, body["run_id"])
        assert [entry["outcome"] for entry in trace] == ["ok", "ended", "ended"]

    async def test_without_it_the_response_is_null(self, client: httpx.AsyncClient) -> None:
        response = await run_action(client, [{"type": "update_object", "values": {"n": 1}}])
        assert response.status_code == 200, response.text
        assert response.json()["response"] is None

    async def test_secret_values_in_the_response_are_redacted(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        # Refused when saved now; one saved before that still never answers the value.
        await create_secret(client, "API_TOKEN", CANARY)
        response = await run_unchecked(app, client, [end({"token": "{{ secrets.API_TOKEN }}"})])
        assert response.status_code == 200, response.text
        assert response.json()["response"] == {"token": "[REDACTED]"}


class TestLog:
    async def test_message_is_in_the_trace_with_secrets_redacted(
        self, app: FastAPI, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        # Refused when saved now; one saved before that still logs no value.
        await create_secret(client, "API_TOKEN", CANARY)
        await create_secret(client, "SA_KEY", '{"private_key": "pk-4f2a9c81e6", "id": 1}')
        action = [
            {
                "type": "log",
                "level": "warning",
                "message": "token={{ secrets.API_TOKEN }} key={{ secrets.SA_KEY.private_key }} "
                "user={{ request.query.user }}",
            }
        ]
        with caplog.at_level(logging.DEBUG):
            response = await run_unchecked(app, client, action, params={"user": "carol"})
        assert response.status_code == 200, response.text
        [entry] = await run_trace(client, response.json()["run_id"])
        assert entry["level"] == "warning"
        assert entry["message"] == "token=[REDACTED] key=[REDACTED] user=carol"
        logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("token=[REDACTED] key=[REDACTED] user=carol" in m for m in logged)
        assert CANARY not in caplog.text
        assert "pk-4f2a9c81e6" not in caplog.text

    async def test_trace_of_a_failed_run_redacts_upstream_values(
        self, client: httpx.AsyncClient, echo: Echo
    ) -> None:
        echo.state.reply("/token", json={"access_token": CANARY})
        action = [
            web_request(echo, "/token", result_mapping={"token": "$.access_token"}),
            {"type": "log", "message": "got {{ vars.token }}"},
            {"type": "throw", "status": 500, "message": "failed after {{ vars.token }}"},
        ]
        await create_service(client, action, enable_log=False)
        response = await client.get("/api/services/svc/run")
        assert response.status_code == 500, response.text
        assert CANARY not in response.text
        trace = await run_trace(client, response.json()["run_id"])
        assert trace[1]["message"] == "got [REDACTED]"
        assert CANARY not in str(trace)


class TestUpdateSecret:
    async def test_expires_in_seconds_from_now(self, client: httpx.AsyncClient) -> None:
        await create_secret(client, "TOKEN")
        action = [
            {
                "type": "update_secret",
                "secret": "TOKEN",
                "value": "new-value",
                "expires_in": "{{ request.query.ttl }}",
            }
        ]
        before = datetime.now(UTC)
        response = await run_action(client, action, params={"ttl": "3600"})
        assert response.status_code == 200, response.text
        state = await secret_state(client, "TOKEN")
        expires_at = datetime.fromisoformat(state["expires_at"])
        assert before + timedelta(seconds=3599) <= expires_at
        assert expires_at <= datetime.now(UTC) + timedelta(seconds=3601)
        assert state["version"] == 1
        assert await secret_value(client, "TOKEN") == "new-value"

    @pytest.mark.parametrize(
        ("expires_at", "expected"),
        [
            ("2031-05-06T07:08:09Z", datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)),
            ("2031-05-06T09:08:09+02:00", datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)),
            ("2031-05-06T07:08:09", datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)),
            (1_900_000_000, datetime.fromtimestamp(1_900_000_000, UTC)),
            ("1900000000", datetime.fromtimestamp(1_900_000_000, UTC)),
            (1_900_000_000.5, datetime.fromtimestamp(1_900_000_000.5, UTC)),
        ],
    )
    async def test_expires_at_iso_or_epoch(
        self, client: httpx.AsyncClient, expires_at: Any, expected: datetime
    ) -> None:
        await create_secret(client, "TOKEN")
        action = [
            {"type": "update_secret", "secret": "TOKEN", "value": "v1", "expires_at": expires_at}
        ]
        response = await run_action(client, action)
        assert response.status_code == 200, response.text
        state = await secret_state(client, "TOKEN")
        assert datetime.fromisoformat(state["expires_at"]) == expected

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("expires_at", "tomorrow"),
            ("expires_at", True),
            ("expires_in", "soon"),
            ("expires_in", 1e30),
        ],
    )
    async def test_unreadable_expiry_fails_and_keeps_the_value(
        self, client: httpx.AsyncClient, field: str, value: Any
    ) -> None:
        await create_secret(client, "TOKEN", "old-value")
        action = [{"type": "update_secret", "secret": "TOKEN", "value": "new", field: value}]
        response = await run_action(client, action)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["type"] == "binding_error"
        assert f"'{field}'" in error["message"]
        assert await secret_value(client, "TOKEN") == "old-value"

    @pytest.mark.parametrize("value", ["", "{{ vars.nothing }}", "{{ request.query.missing }}"])
    async def test_empty_or_null_value_is_refused(
        self, client: httpx.AsyncClient, value: str
    ) -> None:
        await create_secret(client, "TOKEN", "old-value")
        action = [
            {"type": "update_object", "values": {"nothing": None}},
            {"type": "update_secret", "secret": "TOKEN", "value": value},
        ]
        response = await run_action(client, action)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["type"] == "binding_error"
        assert "the stored one is kept" in error["message"]
        assert await secret_value(client, "TOKEN") == "old-value"

    async def test_allow_empty_writes_an_empty_value(self, client: httpx.AsyncClient) -> None:
        await create_secret(client, "TOKEN", "old-value")
        action = [{"type": "update_secret", "secret": "TOKEN", "value": "", "allow_empty": True}]
        response = await run_action(client, action)
        assert response.status_code == 200, response.text
        assert await secret_value(client, "TOKEN") == ""

    async def test_allow_empty_still_refuses_null(self, client: httpx.AsyncClient) -> None:
        await create_secret(client, "TOKEN", "old-value")
        action = [
            {
                "type": "update_secret",
                "secret": "TOKEN",
                "value": "{{ request.query.v }}",
                "allow_empty": True,
            }
        ]
        response = await run_action(client, action)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["message"] == (
            "update_secret TOKEN: the value is null, so the stored one is kept"
        )
        assert await secret_value(client, "TOKEN") == "old-value"

    async def test_later_nodes_read_the_new_value(self, client: httpx.AsyncClient) -> None:
        await create_secret(client, "TOKEN", "old-value")
        # The response is redacted, so the comparison happens inside the action.
        action = [
            {"type": "update_secret", "secret": "TOKEN", "value": "new-value"},
            {
                "type": "if",
                "condition": {"op": "equals", "left": "{{ secrets.TOKEN }}", "right": "new-value"},
                "then": [end("sees new")],
                "else": [end("sees old")],
            },
        ]
        response = await run_action(client, action)
        assert response.status_code == 200, response.text
        assert response.json()["response"] == "sees new"

    async def test_failure_after_two_writes_keeps_both_secrets(
        self, client: httpx.AsyncClient, echo: Echo
    ) -> None:
        await create_secret(client, "ACCESS", "access-old")
        await create_secret(client, "REFRESH", "refresh-old")
        echo.state.reply(
            "/token", json={"access_token": "access-new", "refresh_token": "refresh-new"}
        )
        action = [
            web_request(
                echo,
                "/token",
                method="POST",
                result_mapping={"a": "$.access_token", "r": "$.refresh_token"},
            ),
            {
                "type": "update_secret",
                "secret": "ACCESS",
                "value": "{{ vars.a }}",
                "expires_in": 60,
            },
            {"type": "update_secret", "secret": "REFRESH", "value": "{{ vars.r }}"},
            {"type": "throw", "status": 503, "message": "stop after the writes"},
        ]
        response = await run_action(client, action)
        assert response.status_code == 503, response.text
        assert await secret_value(client, "ACCESS") == "access-old"
        assert await secret_value(client, "REFRESH") == "refresh-old"
        for name in ("ACCESS", "REFRESH"):
            state = await secret_state(client, name)
            assert state["version"] == 1
            assert state["expires_at"] is None
