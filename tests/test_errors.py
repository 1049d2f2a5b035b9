"""Every error, whoever raises it, is `{"error": {"type", "message", ...}}` with its status."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

CANARY = "crash-canary-5be1f0"


def error_of(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    """The `error` object of a response, after checking the status and the shape."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert error["type"] == error_type
    assert isinstance(error["message"], str) and error["message"]
    return error


class TestFrameworkErrors:
    async def test_unknown_route_is_404_pointing_at_the_docs(
        self, client: httpx.AsyncClient
    ) -> None:
        error = error_of(await client.get("/v1/nothing-here"), 404, "not_found")

        assert "/v1/nothing-here" in error["message"]
        assert "/docs" in error["message"]

    @pytest.mark.parametrize(
        ("method", "path", "allowed"),
        [("DELETE", "/v1/runs", "GET"), ("PATCH", "/v1/services", "GET, POST")],
    )
    async def test_wrong_method_on_a_v1_route_is_405_with_allow(
        self, client: httpx.AsyncClient, method: str, path: str, allowed: str
    ) -> None:
        response = await client.request(method, path)

        error = error_of(response, 405, "method_not_allowed")
        assert sorted(response.headers["allow"].split(", ")) == allowed.split(", ")
        assert method in error["message"] and path in error["message"]


class TestValidationErrors:
    async def test_malformed_json_body_is_422(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/v1/secrets",
            content=b'{"name": "ACCESS_TOKEN", ',
            headers={"content-type": "application/json"},
        )

        error = error_of(response, 422, "validation_error")
        assert "not valid JSON" in error["message"]
        assert error["errors"] == [{"path": "", "message": error["message"]}]

    async def test_every_problem_is_listed_with_its_path(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/v1/secrets", json={"name": "1-starts-with-a-digit", "locked": "maybe", "colour": 1}
        )

        error = error_of(response, 422, "validation_error")
        paths = sorted(problem["path"] for problem in error["errors"])
        assert paths == ["colour", "locked", "name"]
        assert all(problem["message"] for problem in error["errors"])
        first = error["errors"][0]
        assert error["message"] == f"{first['path']}: {first['message']}"

    async def test_action_error_points_at_the_node(self, client: httpx.AsyncClient) -> None:
        node = {"type": "if", "condition": {"op": "has_value", "left": 1}, "then": [{"type": "x"}]}
        body = {
            "slug": "tools",
            "name": "Tools",
            "endpoints": [{"readable_id": "e", "name": "E", "action": [node]}],
        }

        error = error_of(await client.post("/v1/services", json=body), 422, "validation_error")

        assert error["errors"][0]["path"] == "endpoints[0].action[0].then[0]"
        assert "unknown node type 'x'" in error["errors"][0]["message"]

    async def test_domain_validation_error_lists_its_problem_too(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.post("/v1/secrets", json={"name": "A", "environment": "test"})

        error = error_of(response, 422, "validation_error")
        assert error["errors"] == [{"path": "", "message": error["message"]}]


class TestRunRouteErrors:
    @pytest.fixture
    async def echo(self, client: httpx.AsyncClient) -> str:
        """An endpoint that only accepts GET and POST and answers the body it got."""
        action = [{"type": "end_execution", "response": "{{ request.body }}"}]
        endpoint = {
            "readable_id": "echo",
            "name": "Echo",
            "methods": ["GET", "POST"],
            "action": action,
        }
        body = {"slug": "tools", "name": "Tools", "endpoints": [endpoint]}
        response = await client.post("/v1/services", json=body)
        assert response.status_code == 201, response.text
        return "/api/services/tools/echo"

    async def test_malformed_json_to_an_endpoint_is_422(
        self, client: httpx.AsyncClient, echo: str
    ) -> None:
        response = await client.post(
            echo, content=b"{nope", headers={"content-type": "application/json"}
        )

        error = error_of(response, 422, "validation_error")
        assert "not valid JSON" in error["message"]
        assert error["errors"][0]["message"] == error["message"]

    async def test_method_the_endpoint_does_not_accept_is_405(
        self, client: httpx.AsyncClient, echo: str
    ) -> None:
        response = await client.put(echo, json={})

        error = error_of(response, 405, "method_not_allowed")
        assert response.headers["allow"] == "GET, POST"
        assert "PUT" in error["message"]

    async def test_unknown_endpoint_is_404(self, client: httpx.AsyncClient) -> None:
        error = error_of(await client.get("/api/services/tools/none"), 404, "not_found")

        assert "tools" in error["message"]


class TestUnexpectedErrors:
    async def test_crash_is_500_without_details_in_answer_or_log(
        self, app: FastAPI, caplog: pytest.LogCaptureFixture
    ) -> None:
        async def crash() -> None:
            raise RuntimeError(f"the value is {CANARY}")

        app.add_api_route("/crash", crash)
        caplog.set_level(logging.DEBUG)
        # The error middleware re-raises after answering; the test wants the answer.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://tokenfarm.test") as http:
            response = await http.get("/crash")

        error = error_of(response, 500, "internal_error")
        assert CANARY not in response.text
        assert "unexpected RuntimeError on GET /crash" in caplog.text
        assert CANARY not in caplog.text
        assert error["message"] == "an unexpected error occurred; see the server log"


# /auth/token answers OAuth clients their own error shape (RFC 6749 §5.2; app/auth/oauth.py).
OAUTH_ERRORS = {("/auth/token", "400"), ("/auth/token", "429")}


class TestDocumentedShape:
    async def test_openapi_documents_the_error_shape(self, client: httpx.AsyncClient) -> None:
        schema = (await client.get("/openapi.json")).json()

        assert "HTTPValidationError" not in schema["components"]["schemas"]
        error = schema["components"]["schemas"]["ErrorResponse"]
        assert error["required"] == ["error"]
        ref = {"$ref": "#/components/schemas/ErrorResponse"}
        oauth = {"$ref": "#/components/schemas/OAuthError"}
        for path, operations in schema["paths"].items():
            for method, operation in operations.items():
                for status, response in operation["responses"].items():
                    if status[0] in "45" or status == "default":
                        if "application/json" not in response["content"]:
                            continue  # an HTML page for a browser (the connect pages)
                        documented = response["content"]["application/json"]["schema"]
                        # /auth/token speaks OAuth's error shape (RFC 6749 §5.2) to OAuth clients.
                        expected = oauth if (path, status) in OAUTH_ERRORS else ref
                        assert documented == expected, f"{method} {path} {status}"
