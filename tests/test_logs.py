"""Logs: one JSON object per line with the request id, the id answered in `X-Request-ID`, no query
string and no secret value on any line — in the app and in a real `tokenfarm serve`."""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI

from app.config import Settings
from app.logs import JsonFormatter, TextFormatter, request_id_var
from app.middleware import VALID_REQUEST_ID
from tests.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    OWNER_PASSWORD,
    TokenServer,
    secret_value,
    setup_oauth,
)
from tests.processes import free_port, run_cli


@contextmanager
def captured(formatter: logging.Formatter | None = None) -> Iterator[io.StringIO]:
    """Everything logged meanwhile, formatted as the app's handler would (JSON by default)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter or JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line as a JSON object (the test fails on a line that isn't one)."""
    lines = text.splitlines()
    assert lines, "nothing was logged"
    return [json.loads(line) for line in lines]


def record(message: str, *args: Any, **fields: Any) -> logging.LogRecord:
    """A log record as a logger would make it."""
    made = logging.LogRecord("tokenfarm.test", logging.INFO, __file__, 1, message, args, None)
    made.__dict__.update(fields)
    return made


class TestFormats:
    def test_a_json_line_has_the_fields_and_stays_one_line(self) -> None:
        token = request_id_var.set("req-1")
        try:
            line = JsonFormatter().format(record("two\nlines %s", "here", run_id="run-9"))
        finally:
            request_id_var.reset(token)

        assert "\n" not in line
        entry = json.loads(line)
        assert entry["message"] == "two\nlines here"
        assert (entry["level"], entry["logger"]) == ("INFO", "tokenfarm.test")
        assert (entry["request_id"], entry["run_id"]) == ("req-1", "run-9")
        assert entry["time"].endswith("Z")

    def test_an_exception_is_a_field_of_the_same_line(self) -> None:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            failed = logging.LogRecord(
                "tokenfarm", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
            )
        entry = json.loads(JsonFormatter().format(failed))
        assert "RuntimeError: boom" in entry["exception"]

    def test_outside_a_request_there_is_no_request_id(self) -> None:
        entry = json.loads(JsonFormatter().format(record("idle")))
        assert "request_id" not in entry
        assert TextFormatter().format(record("idle")).endswith("tokenfarm.test: idle")

    def test_text_shows_the_request_id_in_brackets(self) -> None:
        token = request_id_var.set("req-2")
        try:
            line = TextFormatter().format(record("hello"))
        finally:
            request_id_var.reset(token)
        assert line.endswith("tokenfarm.test [req-2]: hello")

    @pytest.mark.parametrize(
        ("environment", "configured", "expected"),
        [
            ("development", None, "text"),
            ("test", None, "json"),
            ("production", None, "json"),
            ("development", "json", "json"),
            ("production", "text", "text"),
        ],
    )
    def test_json_except_in_development(
        self, environment: str, configured: str | None, expected: str, tmp_path: Path
    ) -> None:
        settings = Settings(
            environment=environment,  # type: ignore[arg-type]
            data_dir=tmp_path,
            log_format=configured,  # type: ignore[arg-type]
        )
        assert settings.resolved_log_format == expected


class TestRequestId:
    async def test_a_given_id_is_answered_and_on_every_line_of_the_request(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await setup_oauth(client, token_server)
        with captured() as stream:
            response = await client.get(
                "/refresh/ACCESS_TOKEN", headers={"X-Request-ID": "trace-4f2a:77"}
            )
        assert response.status_code == 200, response.text
        assert response.headers["X-Request-ID"] == "trace-4f2a:77"

        lines = json_lines(stream.getvalue())
        assert {line.get("request_id") for line in lines} == {"trace-4f2a:77"}
        loggers = {line["logger"] for line in lines}
        assert {"tokenfarm.run", "tokenfarm.access"} <= loggers
        [access] = [line for line in lines if line["logger"] == "tokenfarm.access"]
        assert (access["method"], access["path"], access["status"]) == (
            "GET",
            "/refresh/ACCESS_TOKEN",
            200,
        )

    @pytest.mark.parametrize(
        "given", ["", "has spaces", "x" * 129, "-starts-with-a-dash", 'quote"d', "semi;colon"]
    )
    async def test_an_unusable_id_is_replaced_by_one_of_ours(
        self, anonymous_client: httpx.AsyncClient, given: str
    ) -> None:
        response = await anonymous_client.get("/healthz", headers={"X-Request-ID": given})

        answered = response.headers["X-Request-ID"]
        assert answered != given
        assert len(answered) == 32 and int(answered, 16) >= 0

    async def test_without_one_each_request_gets_its_own(
        self, anonymous_client: httpx.AsyncClient
    ) -> None:
        first = (await anonymous_client.get("/healthz")).headers["X-Request-ID"]
        second = (await anonymous_client.get("/healthz")).headers["X-Request-ID"]
        assert first != second
        assert VALID_REQUEST_ID.fullmatch(first)

    async def test_error_answers_carry_it_too(self, anonymous_client: httpx.AsyncClient) -> None:
        response = await anonymous_client.get("/v1/secrets", headers={"X-Request-ID": "abc"})
        assert response.status_code == 401
        assert response.headers["X-Request-ID"] == "abc"

    async def test_the_log_lines_of_an_unexpected_error_carry_the_id(self, app: FastAPI) -> None:
        async def explode() -> None:
            raise RuntimeError("boom")

        app.add_api_route("/test-only/explode", explode)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://tokenfarm.test") as http:
            with captured() as stream:
                response = await http.get("/test-only/explode", headers={"X-Request-ID": "boom-1"})

        # Starlette's outermost error middleware answers it, outside ours: its handler names the
        # id in the answer, and the id is on the lines that matter.
        assert response.status_code == 500
        assert response.json()["error"]["type"] == "internal_error"
        assert response.headers["X-Request-ID"] == "boom-1"
        lines = json_lines(stream.getvalue())
        [unexpected] = [line for line in lines if "unexpected RuntimeError" in line["message"]]
        assert unexpected["request_id"] == "boom-1"
        [access] = [line for line in lines if line["logger"] == "tokenfarm.access"]
        assert (access["status"], access["request_id"]) == (500, "boom-1")


class TestNothingSecretIsLogged:
    async def test_no_canary_in_the_logs_of_a_refresh_and_a_failing_one(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        with captured() as stream:
            setup = await setup_oauth(client, token_server)
            assert (await client.get("/refresh/ACCESS_TOKEN")).status_code == 200
            token_server.state.fault = "http_500"
            assert (await client.get("/refresh/ACCESS_TOKEN")).status_code == 502
            token_server.state.fault = "invalid_grant"
            assert (await client.get("/refresh/ACCESS_TOKEN")).status_code == 502
            read_back = [
                await secret_value(client, "ACCESS_TOKEN"),
                await secret_value(client, "REFRESH_TOKEN"),
            ]

        text = stream.getvalue()
        lines = json_lines(text)
        assert any("failed" in line["message"] for line in lines)
        canaries = [CLIENT_ID, CLIENT_SECRET, OWNER_PASSWORD, setup.refresh_token, *read_back]
        for canary in canaries:
            assert canary not in text

    async def test_query_strings_are_never_logged(self, client: httpx.AsyncClient) -> None:
        canary = "code-canary-93be1f"
        service = {
            "slug": "callback",
            "name": "Callback",
            "endpoints": [
                {
                    "readable_id": "receive",
                    "name": "Receive",
                    "enable_log": True,
                    "action": [
                        {"type": "update_object", "values": {"code": "{{ request.query.code }}"}}
                    ],
                }
            ],
        }
        assert (await client.post("/v1/services", json=service)).status_code == 201
        with captured() as stream:
            response = await client.get(f"/api/services/callback/receive?code={canary}")
        assert response.status_code == 200, response.text

        text = stream.getvalue()
        assert canary not in text
        assert "GET /api/services/callback/receive 200" in text


class TestServe:
    def test_a_real_server_writes_json_lines_with_the_request_id(
        self, database_url: str, tmp_path: Path
    ) -> None:
        deployment = {
            "TOKENFARM_ENVIRONMENT": "staging",
            "TOKENFARM_DATABASE_URL": database_url,
            "TOKENFARM_DATA_DIR": str(tmp_path),
            "TOKENFARM_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            "TOKENFARM_JWT_SECRET": secrets.token_urlsafe(48),
            "TOKENFARM_SCHEDULER_ENABLED": "false",
        }
        assert run_cli("migrate", env=deployment).returncode == 0
        port = free_port()
        stderr = tmp_path / "stderr.log"
        # JSON because the environment isn't development (TOKENFARM_LOG_FORMAT is unset).
        env = {**os.environ, **deployment}
        env.pop("TOKENFARM_LOG_FORMAT", None)
        with stderr.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--no-migrate", "--port", str(port)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=sink,
            )
            try:
                base = f"http://127.0.0.1:{port}"
                deadline = time.monotonic() + 30
                while True:
                    try:
                        httpx.get(f"{base}/healthz", timeout=1)
                        break
                    except httpx.TransportError:
                        assert process.poll() is None, stderr.read_text()
                        assert time.monotonic() < deadline, stderr.read_text()
                        time.sleep(0.2)
                response = httpx.get(
                    f"{base}/v1/secrets?token=query-canary-5d1e",
                    headers={"X-Request-ID": "from-the-proxy-1"},
                )
                assert response.status_code == 401
                assert response.headers["X-Request-ID"] == "from-the-proxy-1"
            finally:
                process.terminate()
                process.wait(timeout=10)

        lines = stderr.read_text().splitlines()
        # uvicorn prints its first lines before the app's lifespan takes its loggers over.
        started = next(i for i, line in enumerate(lines) if "Application startup complete" in line)
        entries = [json.loads(line) for line in lines[started:]]
        [access] = [e for e in entries if e.get("request_id") == "from-the-proxy-1"]
        assert (access["logger"], access["path"], access["status"]) == (
            "tokenfarm.access",
            "/v1/secrets",
            401,
        )
        assert "query-canary-5d1e" not in stderr.read_text()
        assert any(e["logger"].startswith("uvicorn") for e in entries)
