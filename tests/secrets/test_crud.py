"""`/v1/secrets` metadata routes: create, list, get, change and delete, through the real API."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import create_secret
from tests.secrets.conftest import Canaries, create_service, error_of, put_value, read_value


class TestCreateSecret:
    async def test_secret_without_a_value_has_none(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        response = await client.post(
            "/v1/secrets", json={"name": "ACCESS_TOKEN", "description": "GitHub token"}
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["name"] == "ACCESS_TOKEN"
        assert body["description"] == "GitHub token"
        assert body["environment_specific"] is True
        assert body["locked"] is False
        assert body["status"] == "ok"
        assert body["environment"] == "test"
        assert body["has_value"] is False
        assert body["version"] is None
        assert body["environments"] == []
        assert "value" not in body
        error = error_of(await client.get("/v1/secrets/ACCESS_TOKEN/value"), 404)
        assert "PUT /v1/secrets/ACCESS_TOKEN/value" in error["message"]

    async def test_first_value_becomes_version_one(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        value = canaries.new("first")
        response = await client.post("/v1/secrets", json={"name": "ACCESS_TOKEN", "value": value})
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["has_value"] is True
        assert body["version"] == 1
        assert body["environments"] == ["test"]
        read = await read_value(client, "ACCESS_TOKEN")
        assert read == {
            "name": "ACCESS_TOKEN",
            "value": value,
            "version": 1,
            "expires_at": None,
            "environment": "test",
        }

    async def test_first_value_goes_to_the_named_environment(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        value = canaries.new("production")
        await create_secret(client, "ACCESS_TOKEN", value, environment="production")
        assert (await read_value(client, "ACCESS_TOKEN", "production"))["value"] == value
        error_of(await client.get("/v1/secrets/ACCESS_TOKEN/value"), 404)

    async def test_first_value_of_a_shared_secret_serves_every_environment(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        value = canaries.new("shared")
        response = await client.post(
            "/v1/secrets",
            json={"name": "CLIENT_ID", "value": value, "environment_specific": False},
        )
        assert response.status_code == 201, response.text
        assert response.json()["environment"] == "*"
        assert response.json()["environments"] == ["*"]
        read = await read_value(client, "CLIENT_ID")
        assert (read["value"], read["environment"]) == (value, "*")

    async def test_expiry_of_the_first_value_is_kept(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        response = await client.post(
            "/v1/secrets",
            json={
                "name": "ACCESS_TOKEN",
                "value": canaries.new("expiring"),
                "expires_at": "2031-05-01T12:00:00+02:00",
            },
        )
        assert response.status_code == 201, response.text
        assert response.json()["expires_at"] == "2031-05-01T10:00:00Z"

    async def test_duplicate_name_is_a_conflict(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        await create_secret(client, "ACCESS_TOKEN", canaries.new("original"))
        response = await client.post(
            "/v1/secrets", json={"name": "ACCESS_TOKEN", "value": canaries.new("second")}
        )
        error = error_of(response, 409)
        assert error["type"] == "already_exists"
        assert "ACCESS_TOKEN" in error["message"]
        assert (await read_value(client, "ACCESS_TOKEN"))["version"] == 1

    @pytest.mark.parametrize("name", ["1TOKEN", "has space", "", "dot.ted", "A" * 129, "tökén"])
    async def test_bad_name_is_refused_with_the_naming_rule(
        self, client: httpx.AsyncClient, canaries: Canaries, name: str
    ) -> None:
        error = error_of(await client.post("/v1/secrets", json={"name": name}), 422)
        assert error["type"] == "validation_error"
        assert error["message"].startswith("name: a secret name starts with a letter")
        assert (await client.get("/v1/secrets")).json() == []

    @pytest.mark.parametrize("method", ["POST", "PATCH"])
    async def test_description_with_a_nul_character_is_refused(
        self, client: httpx.AsyncClient, method: str
    ) -> None:
        await create_secret(client, "EXISTING", description="kept")
        if method == "POST":
            response = await client.post(
                "/v1/secrets", json={"name": "NEW", "description": "a\x00b"}
            )
        else:
            response = await client.patch("/v1/secrets/EXISTING", json={"description": "a\x00b"})
        error = error_of(response, 422)
        assert error["message"] == "description: must not contain the NUL character (\\u0000)"
        assert [s["description"] for s in (await client.get("/v1/secrets")).json()] == ["kept"]

    async def test_unknown_field_is_refused_by_name(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        response = await client.post(
            "/v1/secrets", json={"name": "ACCESS_TOKEN", "valu": canaries.new("typo")}
        )
        error = error_of(response, 422)
        assert error["message"] == "valu: unknown field"
        error_of(await client.get("/v1/secrets/ACCESS_TOKEN"), 404)

    async def test_null_value_is_refused_with_a_sentence(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        response = await client.post("/v1/secrets", json={"name": "ACCESS_TOKEN", "value": None})
        error = error_of(response, 422)
        assert (
            error["message"] == "value: a secret value can't be null (any other JSON value is fine)"
        )
        error_of(await client.get("/v1/secrets/ACCESS_TOKEN"), 404)

    async def test_environment_without_a_value_is_refused(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        response = await client.post(
            "/v1/secrets", json={"name": "ACCESS_TOKEN", "environment": "production"}
        )
        assert "go with a 'value'" in error_of(response, 422)["message"]
        error_of(await client.get("/v1/secrets/ACCESS_TOKEN"), 404)

    async def test_shared_secret_refuses_an_environment_and_is_not_created(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        response = await client.post(
            "/v1/secrets",
            json={
                "name": "CLIENT_ID",
                "value": canaries.new("shared"),
                "environment_specific": False,
                "environment": "test",
            },
        )
        assert "one value for all environments" in error_of(response, 422)["message"]
        error_of(await client.get("/v1/secrets/CLIENT_ID"), 404)

    async def test_refresh_endpoint_must_exist(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        response = await client.post(
            "/v1/secrets", json={"name": "ACCESS_TOKEN", "refresh_endpoint": "oauth/refresh"}
        )
        assert "no endpoint 'refresh' in service 'oauth'" in error_of(response, 422)["message"]
        await create_service(client, "oauth", "refresh")
        response = await client.post(
            "/v1/secrets", json={"name": "ACCESS_TOKEN", "refresh_endpoint": "oauth/refresh"}
        )
        assert response.status_code == 201, response.text
        assert response.json()["refresh_endpoint"] == "oauth/refresh"


class TestListAndGetSecrets:
    async def test_list_shows_every_secret_by_name_without_values(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        await create_secret(client, "REFRESH_TOKEN", canaries.new("refresh"))
        await create_secret(client, "ACCESS_TOKEN")
        await create_secret(client, "CLIENT_ID", canaries.new("client"), environment_specific=False)
        response = await client.get("/v1/secrets")
        assert response.status_code == 200, response.text
        listed = {s["name"]: s for s in response.json()}
        assert list(listed) == ["ACCESS_TOKEN", "CLIENT_ID", "REFRESH_TOKEN"]
        assert listed["ACCESS_TOKEN"]["has_value"] is False
        assert listed["CLIENT_ID"]["environment"] == "*"
        assert listed["REFRESH_TOKEN"]["version"] == 1
        assert all("value" not in s for s in listed.values())

    async def test_list_is_empty_at_first(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/v1/secrets")
        assert (response.status_code, response.json()) == (200, [])

    async def test_get_shows_the_current_version_and_expiry(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        await create_secret(client, "ACCESS_TOKEN", canaries.new("v1"))
        await put_value(
            client, "ACCESS_TOKEN", canaries.new("v2"), expires_at="2030-01-01T00:00:00Z"
        )
        response = await client.get("/v1/secrets/ACCESS_TOKEN")
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["version"], body["expires_at"]) == (2, "2030-01-01T00:00:00Z")

    async def test_unknown_secret_is_not_found(self, client: httpx.AsyncClient) -> None:
        error = error_of(await client.get("/v1/secrets/NOPE"), 404)
        assert error["type"] == "not_found"
        assert "'NOPE'" in error["message"]

    @pytest.mark.parametrize("name", ["A%00B", "A" * 300, "has%20space", "%C3%A9t%C3%A9"])
    async def test_a_name_no_secret_can_have_is_not_found_on_every_route(
        self, client: httpx.AsyncClient, name: str
    ) -> None:
        """PostgreSQL refuses NUL in text: such names must never reach the database."""
        for method, path, body in [
            ("GET", "", None),
            ("PATCH", "", {"locked": True}),
            ("DELETE", "", None),
            ("GET", "/value", None),
            ("PUT", "/value", {"value": "x"}),
            ("GET", "/versions", None),
            ("POST", "/rollback", {"version": 1}),
        ]:
            response = await client.request(method, f"/v1/secrets/{name}{path}", json=body)
            assert error_of(response, 404)["type"] == "not_found", (method, path)


class TestUpdateSecret:
    async def test_description_and_lock_change_and_the_rest_stays(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        await create_secret(client, "ACCESS_TOKEN", canaries.new("value"), description="old")
        response = await client.patch(
            "/v1/secrets/ACCESS_TOKEN", json={"description": "new", "locked": True}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["description"], body["locked"]) == ("new", True)
        assert (body["environment_specific"], body["version"]) == (True, 1)
        response = await client.patch("/v1/secrets/ACCESS_TOKEN", json={"locked": False})
        assert response.json()["locked"] is False
        assert response.json()["description"] == "new"

    async def test_refresh_endpoint_binds_to_an_existing_endpoint_and_unbinds_with_null(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        await create_service(client, "oauth", "refresh-token")
        await create_secret(client, "ACCESS_TOKEN", canaries.new("value"))
        response = await client.patch(
            "/v1/secrets/ACCESS_TOKEN", json={"refresh_endpoint": "oauth/refresh-token"}
        )
        assert response.status_code == 200, response.text
        assert response.json()["refresh_endpoint"] == "oauth/refresh-token"
        stored = (await client.get("/v1/secrets/ACCESS_TOKEN")).json()
        assert stored["refresh_endpoint"] == "oauth/refresh-token"
        response = await client.patch("/v1/secrets/ACCESS_TOKEN", json={"refresh_endpoint": None})
        assert response.status_code == 200, response.text
        assert response.json()["refresh_endpoint"] is None

    @pytest.mark.parametrize(
        ("refresh_endpoint", "problem"),
        [
            ("oauth/other", "no endpoint 'other' in service 'oauth'"),
            ("missing/refresh-token", "no endpoint 'refresh-token' in service 'missing'"),
            ("oauth", "must be 'SLUG/READABLE_ID'"),
            ("OAuth/refresh-token", "must be 'SLUG/READABLE_ID'"),
        ],
    )
    async def test_refresh_endpoint_that_does_not_exist_is_refused(
        self, client: httpx.AsyncClient, refresh_endpoint: str, problem: str
    ) -> None:
        await create_service(client, "oauth", "refresh-token")
        await create_secret(client, "ACCESS_TOKEN")
        response = await client.patch(
            "/v1/secrets/ACCESS_TOKEN", json={"refresh_endpoint": refresh_endpoint}
        )
        assert problem in error_of(response, 422)["message"]
        assert (await client.get("/v1/secrets/ACCESS_TOKEN")).json()["refresh_endpoint"] is None

    async def test_environment_specific_switches_while_there_is_no_value(
        self, client: httpx.AsyncClient
    ) -> None:
        await create_secret(client, "CLIENT_ID")
        response = await client.patch("/v1/secrets/CLIENT_ID", json={"environment_specific": False})
        assert response.status_code == 200, response.text
        assert response.json()["environment_specific"] is False
        assert response.json()["environment"] == "*"

    @pytest.mark.parametrize("environment_specific", [True, False])
    async def test_environment_specific_cannot_switch_once_values_exist(
        self, client: httpx.AsyncClient, canaries: Canaries, environment_specific: bool
    ) -> None:
        value = canaries.new("kept")
        await create_secret(client, "TOKEN", value, environment_specific=environment_specific)
        response = await client.patch(
            "/v1/secrets/TOKEN", json={"environment_specific": not environment_specific}
        )
        error = error_of(response, 409)
        assert "delete and recreate" in error["message"]
        stored = (await client.get("/v1/secrets/TOKEN")).json()
        assert stored["environment_specific"] is environment_specific
        assert (await read_value(client, "TOKEN"))["value"] == value

    async def test_same_environment_specific_flag_is_no_switch(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        await create_secret(client, "TOKEN", canaries.new("value"))
        response = await client.patch("/v1/secrets/TOKEN", json={"environment_specific": True})
        assert response.status_code == 200, response.text

    @pytest.mark.parametrize("field", ["description", "locked", "environment_specific"])
    async def test_null_for_a_required_field_is_refused(
        self, client: httpx.AsyncClient, field: str
    ) -> None:
        await create_secret(client, "TOKEN", description="kept")
        error = error_of(await client.patch("/v1/secrets/TOKEN", json={field: None}), 422)
        assert f"'{field}' can't be null" in error["message"]
        stored = (await client.get("/v1/secrets/TOKEN")).json()
        assert (stored["description"], stored["locked"]) == ("kept", False)

    async def test_unknown_field_is_refused(self, client: httpx.AsyncClient) -> None:
        await create_secret(client, "TOKEN")
        error = error_of(await client.patch("/v1/secrets/TOKEN", json={"name": "OTHER"}), 422)
        assert error["message"] == "name: unknown field"

    async def test_unknown_secret_is_not_found(self, client: httpx.AsyncClient) -> None:
        error_of(await client.patch("/v1/secrets/NOPE", json={"locked": True}), 404)


class TestDeleteSecret:
    async def test_deleted_secret_is_gone_with_its_values_and_history(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        await create_secret(client, "ACCESS_TOKEN", canaries.new("v1"))
        await put_value(client, "ACCESS_TOKEN", canaries.new("v2"))
        response = await client.delete("/v1/secrets/ACCESS_TOKEN")
        assert (response.status_code, response.content) == (204, b"")
        for path in ("", "/value", "/versions"):
            error_of(await client.get(f"/v1/secrets/ACCESS_TOKEN{path}"), 404)
        error_of(await client.delete("/v1/secrets/ACCESS_TOKEN"), 404)
        assert (await client.get("/v1/secrets")).json() == []

    async def test_name_can_be_reused_with_a_fresh_history(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        await create_secret(client, "ACCESS_TOKEN", canaries.new("old"))
        await put_value(client, "ACCESS_TOKEN", canaries.new("older"))
        assert (await client.delete("/v1/secrets/ACCESS_TOKEN")).status_code == 204
        value = canaries.new("new")
        await create_secret(client, "ACCESS_TOKEN", value)
        read = await read_value(client, "ACCESS_TOKEN")
        assert (read["value"], read["version"]) == (value, 1)
        versions = (await client.get("/v1/secrets/ACCESS_TOKEN/versions")).json()
        assert [v["version"] for v in versions] == [1]


class TestValuesNeverLeak:
    async def test_only_the_value_read_answers_a_value(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        """Every route and error path runs under the canary guard; only the value read is exempt."""
        await create_service(client, "oauth", "refresh-token")
        first, second = canaries.new("first"), {"private_key": canaries.new("json")}
        shared = canaries.new("shared")
        await create_secret(client, "ACCESS_TOKEN", first, refresh_endpoint="oauth/refresh-token")
        await create_secret(client, "CLIENT_ID", shared, environment_specific=False)
        await put_value(client, "ACCESS_TOKEN", second, expires_at="2030-01-01T00:00:00Z")
        await put_value(client, "ACCESS_TOKEN", canaries.new("staging"), environment="staging")
        await client.get("/v1/secrets")
        await client.get("/v1/secrets/ACCESS_TOKEN")
        await client.patch("/v1/secrets/ACCESS_TOKEN", json={"locked": True})
        await client.get("/v1/secrets/ACCESS_TOKEN/versions")
        await client.post("/v1/secrets/ACCESS_TOKEN/rollback", json={"version": 1})
        # Error paths, some of which carry a value in the request.
        await client.post("/v1/secrets", json={"name": "ACCESS_TOKEN", "value": canaries.new("x")})
        await client.post("/v1/secrets", json={"name": "9BAD", "value": canaries.new("bad")})
        await client.put(
            "/v1/secrets/CLIENT_ID/value", json={"value": canaries.new("e"), "environment": "test"}
        )
        await client.put(
            "/v1/secrets/ACCESS_TOKEN/value",
            json={"value": canaries.new("naive"), "expires_at": "2030-01-01T00:00:00"},
        )
        await client.put("/v1/secrets/NOPE/value", json={"value": canaries.new("nope")})
        await client.patch("/v1/secrets/ACCESS_TOKEN", json={"environment_specific": False})
        await client.get("/refresh/CLIENT_ID")
        await client.get("/openapi.json")
        assert canaries.checked >= 17
        # The guard is not vacuous: the value read does answer the values.
        assert (await read_value(client, "ACCESS_TOKEN"))["value"] == first
        assert (await read_value(client, "CLIENT_ID"))["value"] == shared
        await client.delete("/v1/secrets/ACCESS_TOKEN")


class TestFailedRequests:
    async def test_a_refused_request_has_released_its_connection_when_it_answers(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        error_of(await client.get("/v1/secrets/NOPE"), 404)
        assert app.state.engine.pool.checkedout() == 0


class TestConcurrentCreates:
    async def test_only_one_of_many_simultaneous_creates_wins(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        responses = await asyncio.gather(
            *(
                client.post("/v1/secrets", json={"name": "RACE", "value": canaries.new(str(n))})
                for n in range(5)
            )
        )
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [201, 409, 409, 409, 409], [r.text for r in responses]
        assert (await read_value(client, "RACE"))["version"] == 1
