"""The services API: CRUD, action validation with exact paths, and routing of runs."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import canonical_action, create_secret

LOG = {"type": "log", "message": "hello"}


def endpoint(
    readable_id: str = "run", action: list[Any] | None = None, **fields: Any
) -> dict[str, Any]:
    """An endpoint as the API takes it."""
    return {
        "readable_id": readable_id,
        "name": f"Endpoint {readable_id}",
        "action": action if action is not None else [LOG],
        **fields,
    }


def service(slug: str = "svc", *endpoints: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A service body for POST /v1/services."""
    return {"slug": slug, "name": "Service", "endpoints": list(endpoints) or [endpoint()], **fields}


async def create(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    """Create a service, failing the test on any error."""
    response = await client.post("/v1/services", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def refused(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    """POST a bad service: expect 422, nothing saved, and return the `error` object."""
    response = await client.post("/v1/services", json=body)
    assert response.status_code == 422, response.text
    payload = response.json()
    assert set(payload) == {"error"}
    if body.get("slug"):
        assert (await client.get(f"/v1/services/{body['slug']}")).status_code in (404, 422)
    error: dict[str, Any] = payload["error"]
    return error


class TestServiceCrud:
    async def test_create_answers_the_service_as_written(self, client: httpx.AsyncClient) -> None:
        body = service(
            "oauth",
            endpoint(
                "refresh",
                [{"type": "update_object", "values": {"token": None}}],
                methods=["POST"],
                enable_log=True,
                description="Refreshes",
            ),
            variables=[{"name": "token", "type": "string", "default": "x"}],
            description="The provider",
        )
        created = await create(client, body)
        assert created["slug"] == "oauth"
        assert created["description"] == "The provider"
        assert created["variables"] == [{"name": "token", "type": "string", "default": "x"}]
        assert created["endpoints"] == [
            {
                "readable_id": "refresh",
                "name": "Endpoint refresh",
                "description": "Refreshes",
                "methods": ["POST"],
                "enable_log": True,
                "action": [{"type": "update_object", "values": {"token": None}}],
            }
        ]

    async def test_defaults_of_an_endpoint(self, client: httpx.AsyncClient) -> None:
        created = await create(client, service())
        [saved] = created["endpoints"]
        assert saved["methods"] == ["GET", "POST"]
        assert saved["enable_log"] is False
        assert saved["action"] == [LOG]

    async def test_get_and_list(self, client: httpx.AsyncClient) -> None:
        await create(client, service("beta"))
        await create(client, service("alpha"))
        response = await client.get("/v1/services/beta")
        assert response.status_code == 200, response.text
        assert response.json()["slug"] == "beta"
        response = await client.get("/v1/services")
        assert response.status_code == 200, response.text
        assert [s["slug"] for s in response.json()] == ["alpha", "beta"]

    async def test_unknown_service_is_404(self, client: httpx.AsyncClient) -> None:
        for method in ("GET", "PUT", "DELETE"):
            kwargs: dict[str, Any] = {"json": {"name": "x"}} if method == "PUT" else {}
            response = await client.request(method, "/v1/services/nope", **kwargs)
            assert response.status_code == 404, (method, response.text)
            assert response.json()["error"]["type"] == "not_found"

    async def test_duplicate_slug_is_409(self, client: httpx.AsyncClient) -> None:
        await create(client, service("svc"))
        response = await client.post("/v1/services", json=service("svc"))
        assert response.status_code == 409, response.text
        error = response.json()["error"]
        assert error["type"] == "already_exists"
        assert "PUT /v1/services/svc" in error["message"]

    async def test_put_replaces_fields_and_endpoints(self, client: httpx.AsyncClient) -> None:
        created = await create(client, service("svc", endpoint("old"), endpoint("kept")))
        body = {
            "name": "Renamed",
            "variables": [{"name": "n", "type": "integer", "default": 1}],
            "endpoints": [
                endpoint("kept", [{"type": "end_execution", "response": "{{ vars.n }}"}]),
                endpoint("new"),
            ],
        }
        response = await client.put("/v1/services/svc", json=body)
        assert response.status_code == 200, response.text
        replaced = response.json()
        assert replaced["name"] == "Renamed"
        assert replaced["description"] == ""
        assert [e["readable_id"] for e in replaced["endpoints"]] == ["kept", "new"]
        assert replaced["created_at"] == created["created_at"]
        assert replaced["updated_at"] > created["updated_at"]
        assert (await client.get("/api/services/svc/old")).status_code == 404
        ran = await client.get("/api/services/svc/kept")
        assert ran.status_code == 200, ran.text
        assert ran.json()["response"] == 1
        assert (await client.get("/v1/services/svc")).json() == replaced

    async def test_put_is_validated_like_create(self, client: httpx.AsyncClient) -> None:
        await create(client, service("svc"))
        body = {"name": "x", "endpoints": [endpoint("run", [{"type": "teleport"}])]}
        response = await client.put("/v1/services/svc", json=body)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["message"].startswith(
            "endpoints[0].action[0]: unknown node type 'teleport'"
        )
        assert (await client.get("/v1/services/svc")).json()["endpoints"][0]["action"] == [LOG]

    async def test_delete(self, client: httpx.AsyncClient) -> None:
        await create(client, service("svc"))
        response = await client.delete("/v1/services/svc")
        assert response.status_code == 204, response.text
        assert response.content == b""
        assert (await client.get("/v1/services/svc")).status_code == 404
        assert (await client.get("/api/services/svc/run")).status_code == 404

    async def test_slug_can_be_reused_after_delete(self, client: httpx.AsyncClient) -> None:
        await create(client, service("svc", endpoint("run")))
        assert (await client.delete("/v1/services/svc")).status_code == 204
        created = await create(client, service("svc", endpoint("run")))
        assert [e["readable_id"] for e in created["endpoints"]] == ["run"]


class TestBoundEndpoints:
    async def bind(self, client: httpx.AsyncClient, target: str) -> None:
        await create_secret(client, "ACCESS_TOKEN")
        response = await client.patch("/v1/secrets/ACCESS_TOKEN", json={"refresh_endpoint": target})
        assert response.status_code == 200, response.text

    async def test_delete_refused_while_a_secret_refreshes_through_it(
        self, client: httpx.AsyncClient
    ) -> None:
        await create(client, service("svc", endpoint("refresh")))
        await self.bind(client, "svc/refresh")
        response = await client.delete("/v1/services/svc")
        assert response.status_code == 409, response.text
        error = response.json()["error"]
        assert error["type"] == "conflict"
        assert "ACCESS_TOKEN" in error["message"]
        assert (await client.get("/v1/services/svc")).status_code == 200

    async def test_delete_allowed_once_unbound(self, client: httpx.AsyncClient) -> None:
        await create(client, service("svc", endpoint("refresh")))
        await self.bind(client, "svc/refresh")
        response = await client.patch("/v1/secrets/ACCESS_TOKEN", json={"refresh_endpoint": None})
        assert response.status_code == 200, response.text
        assert (await client.delete("/v1/services/svc")).status_code == 204

    async def test_a_similar_slug_does_not_count(self, client: httpx.AsyncClient) -> None:
        await create(client, service("svc-two", endpoint("refresh")))
        await create(client, service("svc", endpoint("refresh")))
        await self.bind(client, "svc-two/refresh")
        assert (await client.delete("/v1/services/svc")).status_code == 204

    async def test_put_removing_a_bound_endpoint_is_refused(
        self, client: httpx.AsyncClient
    ) -> None:
        await create(client, service("svc", endpoint("refresh"), endpoint("other")))
        await self.bind(client, "svc/refresh")
        body = {"name": "x", "endpoints": [endpoint("other")]}
        response = await client.put("/v1/services/svc", json=body)
        assert response.status_code == 409, response.text
        assert "ACCESS_TOKEN" in response.json()["error"]["message"]
        kept = (await client.get("/v1/services/svc")).json()
        assert [e["readable_id"] for e in kept["endpoints"]] == ["refresh", "other"]

    async def test_put_keeping_the_bound_endpoint_is_allowed(
        self, client: httpx.AsyncClient
    ) -> None:
        await create(client, service("svc", endpoint("refresh"), endpoint("other")))
        await self.bind(client, "svc/refresh")
        body = {"name": "x", "endpoints": [endpoint("refresh", [{"type": "log", "message": "v2"}])]}
        response = await client.put("/v1/services/svc", json=body)
        assert response.status_code == 200, response.text
        assert [e["readable_id"] for e in response.json()["endpoints"]] == ["refresh"]


class TestActionValidation:
    async def test_unknown_node_type_names_the_nested_path(self, client: httpx.AsyncClient) -> None:
        action = [
            LOG,
            {"type": "update_object", "values": {"x": 1}},
            {
                "type": "if",
                "condition": {"op": "has_value", "left": "{{ vars.x }}"},
                "then": [{"type": "teleport", "to": "mars"}],
            },
        ]
        error = await refused(client, service("svc", endpoint("run", action)))
        assert error["type"] == "validation_error"
        assert error["message"].startswith(
            "endpoints[0].action[2].then[0]: unknown node type 'teleport'"
        )
        assert error["errors"][0]["path"] == "endpoints[0].action[2].then[0]"
        assert error["errors"][0]["message"].startswith("unknown node type 'teleport'")

    async def test_paths_count_endpoints_and_branches(self, client: httpx.AsyncClient) -> None:
        action = [{"type": "try", "do": [LOG], "catch": [LOG, {"type": "warp"}]}]
        error = await refused(client, service("svc", endpoint("a"), endpoint("b", action)))
        assert error["message"].startswith("endpoints[1].action[0].catch[1]: unknown node type")

    async def test_missing_type(self, client: httpx.AsyncClient) -> None:
        error = await refused(client, service("svc", endpoint("run", [{"message": "hi"}])))
        assert error["type"] == "validation_error"
        assert error["message"].startswith("endpoints[0].action[0]: every node needs a 'type'")

    async def test_unknown_field_in_a_node(self, client: httpx.AsyncClient) -> None:
        action = [{"type": "log", "message": "hi", "colour": "red"}]
        error = await refused(client, service("svc", endpoint("run", action)))
        assert error["message"] == "endpoints[0].action[0].colour: unknown field"

    @pytest.mark.parametrize(
        ("condition", "path", "complaint"),
        [
            ({"when": "always"}, "condition", "a condition is"),
            ({"op": "equals", "left": 1}, "condition", "'equals' needs 'right'"),
            (
                {"all": [{"op": "nearly", "left": 1, "right": 1}]},
                "condition.all[0].op",
                "Input should be",
            ),
            ({"not": {"any": [{"oops": 1}]}}, "condition.not.any[0]", "a condition is"),
        ],
    )
    async def test_bad_condition_shape(
        self, client: httpx.AsyncClient, condition: Any, path: str, complaint: str
    ) -> None:
        action = [{"type": "if", "condition": condition, "then": [LOG]}]
        error = await refused(client, service("svc", endpoint("run", action)))
        assert error["type"] == "validation_error"
        assert error["message"].startswith(f"endpoints[0].action[0].{path}: {complaint}")

    async def test_unknown_secret_in_a_binding(self, client: httpx.AsyncClient) -> None:
        await create_secret(client, "KNOWN", "v")
        action = [
            LOG,
            {
                "type": "web_request",
                "url": "https://api.example.com/x",
                "headers": {
                    "X-Key": "{{ secrets.KNOWN }}",
                    "X-Other": "k={{ secrets.MISSING.field }}",
                },
            },
        ]
        error = await refused(client, service("svc", endpoint("run", action)))
        assert error["type"] == "invalid_action"
        assert error["path"] == "endpoints[0].action[1].headers.X-Other"
        assert error["message"] == (
            "endpoints[0].action[1].headers.X-Other: unknown secret 'MISSING' (create it first)"
        )

    async def test_unknown_secret_written_by_update_secret(self, client: httpx.AsyncClient) -> None:
        action = [
            {
                "type": "if",
                "condition": {"op": "equals", "left": 1, "right": 1},
                "else": [{"type": "update_secret", "secret": "NOPE", "value": "x"}],
            }
        ]
        error = await refused(client, service("svc", endpoint("run", action)))
        assert error["type"] == "invalid_action"
        assert error["path"] == "endpoints[0].action[0].else[0].secret"
        assert error["message"] == (
            "endpoints[0].action[0].else[0].secret: unknown secret 'NOPE' (create it first)"
        )

    async def test_unknown_variable(self, client: httpx.AsyncClient) -> None:
        action = [
            {"type": "log", "message": "{{ vars.declared }} {{ vars.set_later }}"},
            {"type": "end_execution", "response": {"a": ["{{ vars.typo }}"]}},
            {"type": "update_object", "values": {"set_later": 1}},
        ]
        body = service("svc", endpoint("run", action), variables=[{"name": "declared"}])
        error = await refused(client, body)
        assert error["type"] == "invalid_action"
        assert error["path"] == "endpoints[0].action[1].response.a[0]"
        assert error["message"].startswith(
            "endpoints[0].action[1].response.a[0]: unknown variable 'typo'"
        )

    async def test_variables_of_another_service_body_are_unknown(
        self, client: httpx.AsyncClient
    ) -> None:
        await create(client, service("first", variables=[{"name": "token"}]))
        action = [{"type": "log", "message": "{{ vars.token }}"}]
        error = await refused(client, service("second", endpoint("run", action)))
        assert error["message"].startswith("endpoints[0].action[0].message: unknown variable")

    async def test_invalid_jsonpath(self, client: httpx.AsyncClient) -> None:
        action = [
            {
                "type": "web_request",
                "url": "https://auth.example.com/token",
                "result_mapping": {"token": "$.access_token", "bad": "$.[[["},
            }
        ]
        error = await refused(client, service("svc", endpoint("run", action)))
        assert error["type"] == "invalid_action"
        assert error["path"] == "endpoints[0].action[0].result_mapping.bad"
        assert "is not a JSONPath expression" in error["message"]

    @pytest.mark.parametrize(
        "url",
        [
            "ftp://files.example.com/token",
            "file:///etc/passwd",
            "/oauth/token",
            "https://",
            "auth.example.com/token",
            "http://[::1",
            "gopher://{{ vars.host }}/x",
        ],
    )
    async def test_non_http_url(self, client: httpx.AsyncClient, url: str) -> None:
        action = [
            {"type": "update_object", "values": {"host": "h"}},
            {"type": "web_request", "url": url},
        ]
        error = await refused(client, service("svc", endpoint("run", action)))
        assert error["type"] == "invalid_action"
        assert error["message"] == (
            "endpoints[0].action[1].url: must be an absolute http:// or https:// URL"
        )

    async def test_url_with_bindings_is_accepted(self, client: httpx.AsyncClient) -> None:
        action = [
            {"type": "update_object", "values": {"base": "https://a.example.com"}},
            {"type": "web_request", "url": "{{ vars.base }}/token"},
        ]
        await create(client, service("svc", endpoint("run", action)))

    async def test_code_in_a_binding_is_refused(self, client: httpx.AsyncClient) -> None:
        action = [{"type": "log", "message": "{{ __import__('os').getcwd() }}"}]
        error = await refused(client, service("svc", endpoint("run", action)))
        assert error["type"] == "invalid_action"
        assert error["message"].startswith("endpoints[0].action[0].message: ")
        assert "is not a binding path" in error["message"]

    @pytest.mark.parametrize(
        ("binding", "complaint"),
        [
            ("{{ now.x }}", "'now' takes no further path"),
            ("{{ vars }}", "needs a name"),
            ("{{ request.foo }}", "request.query.X"),
            ("{{ env.HOME }}", "unknown root 'env'"),
        ],
    )
    async def test_binding_grammar_errors_name_the_field(
        self, client: httpx.AsyncClient, binding: str, complaint: str
    ) -> None:
        action = [{"type": "throw", "status": 400, "message": f"x {binding}"}]
        error = await refused(client, service("svc", endpoint("run", action)))
        assert error["path"] == "endpoints[0].action[0].message"
        assert complaint in error["message"]

    async def test_duplicate_readable_id(self, client: httpx.AsyncClient) -> None:
        error = await refused(client, service("svc", endpoint("run"), endpoint("run")))
        assert error["type"] == "validation_error"
        assert error["message"] == "endpoints: duplicate endpoint readable_id: run"

    async def test_duplicate_variable(self, client: httpx.AsyncClient) -> None:
        body = service("svc", variables=[{"name": "a"}, {"name": "a"}])
        error = await refused(client, body)
        assert error["message"] == "variables: duplicate variable name: a"

    @pytest.mark.parametrize(
        ("variable", "type_name"),
        [
            ({"name": "n", "type": "integer", "default": "1"}, "integer"),
            ({"name": "n", "type": "integer", "default": 1.5}, "integer"),
            ({"name": "n", "type": "number", "default": True}, "number"),
            ({"name": "n", "type": "string", "default": 3}, "string"),
            ({"name": "n", "type": "object", "default": []}, "object"),
        ],
    )
    async def test_variable_default_must_match_its_type(
        self, client: httpx.AsyncClient, variable: dict[str, Any], type_name: str
    ) -> None:
        body = service("svc", variables=[{"name": "ok", "type": "any", "default": [1]}, variable])
        error = await refused(client, body)
        assert error["message"] == (
            f"variables[1]: the default of variable 'n' is not of type '{type_name}'"
        )

    @pytest.mark.parametrize("slug", ["Bad Slug", "UPPER", "-leading", "a/b", "x" * 65, ""])
    async def test_bad_slug(self, client: httpx.AsyncClient, slug: str) -> None:
        error = await refused(client, service(slug))
        assert error["type"] == "validation_error"
        assert error["message"].startswith("slug: ")

    @pytest.mark.parametrize(
        ("node", "path"),
        [
            ({"type": "try", "do": [LOG], "errors": []}, "errors"),
            ({"type": "try", "do": [LOG], "errors": ["oops"]}, "errors[0]"),
            ({"type": "try", "do": []}, "do"),
            ({"type": "throw", "status": 200, "message": "ok?"}, "status"),
            ({"type": "web_request", "url": "https://a.example", "method": "TRACE"}, "method"),
            (
                {"type": "web_request", "url": "https://a.example", "timeout_seconds": 0},
                "timeout_seconds",
            ),
            (
                {"type": "web_request", "url": "https://a.example", "headers": {"Bad Header": "x"}},
                "headers.Bad Header",
            ),
            (
                {
                    "type": "web_request",
                    "url": "https://a.example",
                    "body": {"form": {}, "raw": "x"},
                },
                "body",
            ),
            (
                {
                    "type": "update_secret",
                    "secret": "S",
                    "value": "v",
                    "expires_in": 1,
                    "expires_at": 2,
                },
                "",
            ),
            ({"type": "update_object", "values": {}}, "values"),
        ],
    )
    async def test_field_constraints_name_the_field(
        self, client: httpx.AsyncClient, node: dict[str, Any], path: str
    ) -> None:
        error = await refused(client, service("svc", endpoint("run", [LOG, node])))
        assert error["type"] == "validation_error"
        where = f"endpoints[0].action[1].{path}" if path else "endpoints[0].action[1]"
        assert error["message"].startswith(f"{where}: ") or error["message"].startswith(
            f"{where}."
        ), error["message"]

    async def test_empty_action_and_no_methods(self, client: httpx.AsyncClient) -> None:
        error = await refused(client, service("svc", endpoint("run", [])))
        assert error["message"].startswith("endpoints[0].action: ")
        error = await refused(client, service("svc", endpoint("run", methods=[])))
        assert error["message"].startswith("endpoints[0].methods: ")

    async def test_saved_action_round_trips(self, client: httpx.AsyncClient) -> None:
        await create_secret(client, "CLIENT_ID", "id")
        await create_secret(client, "CLIENT_SECRET", "secret")
        await create_secret(client, "REFRESH_TOKEN", "rt")
        await create_secret(client, "ACCESS_TOKEN")
        action = canonical_action("https://auth.example.com/oauth/token")
        created = await create(client, service("oauth", endpoint("refresh", action)))
        assert created["endpoints"][0]["action"] == action


class TestRunRouting:
    async def test_method_not_allowed(self, client: httpx.AsyncClient) -> None:
        action = [{"type": "end_execution", "response": "ran"}]
        await create(client, service("svc", endpoint("run", action, methods=["POST"])))
        response = await client.get("/api/services/svc/run")
        assert response.status_code == 405, response.text
        assert response.headers["allow"] == "POST"
        error = response.json()["error"]
        assert error["type"] == "method_not_allowed"
        assert "POST" in error["message"]
        response = await client.post("/api/services/svc/run")
        assert response.status_code == 200, response.text
        assert response.json()["response"] == "ran"

    async def test_unknown_service_or_endpoint_is_404(self, client: httpx.AsyncClient) -> None:
        await create(client, service("svc", endpoint("run")))
        response = await client.get("/api/services/nope/run")
        assert response.status_code == 404, response.text
        assert response.json()["error"]["type"] == "not_found"
        response = await client.get("/api/services/svc/nope")
        assert response.status_code == 404, response.text
        assert "nope" in response.json()["error"]["message"]
