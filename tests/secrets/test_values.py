"""Secret values: every write a new version, one value per environment or one for all."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.conftest import create_secret
from tests.secrets.conftest import Canaries, error_of, put_value, read_value


class TestSetValue:
    async def test_every_write_is_a_new_version(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        await create_secret(client, "ACCESS_TOKEN")
        values = [canaries.new(f"v{n}") for n in range(1, 4)]
        for number, value in enumerate(values, start=1):
            written = await put_value(client, "ACCESS_TOKEN", value)
            assert written == {
                "name": "ACCESS_TOKEN",
                "version": number,
                "environment": "test",
                "expires_at": None,
            }
            read = await read_value(client, "ACCESS_TOKEN")
            assert (read["value"], read["version"]) == (value, number)
        described = (await client.get("/v1/secrets/ACCESS_TOKEN")).json()
        assert (described["has_value"], described["version"]) == (True, 3)

    async def test_same_value_written_twice_is_still_a_new_version(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        value = canaries.new("same")
        await create_secret(client, "ACCESS_TOKEN", value)
        assert (await put_value(client, "ACCESS_TOKEN", value))["version"] == 2

    @pytest.mark.parametrize(
        "shape",
        [
            "object",
            "nested",
            "list",
            "integer",
            "float",
            "boolean",
            "empty string",
            "control characters",
        ],
    )
    async def test_any_json_value_round_trips(
        self, client: httpx.AsyncClient, canaries: Canaries, shape: str
    ) -> None:
        values: dict[str, Any] = {
            "object": {"private_key": canaries.new("key"), "client_email": "sa@example.com"},
            "nested": {"a": {"b": [1, 2.5, None, True, {"c": canaries.new("deep")}]}},
            "list": [canaries.new("one"), canaries.new("two")],
            "integer": 1234567,
            "float": 0.25,
            "boolean": False,
            "empty string": "",
            "control characters": f"a\x00b\n{canaries.new('nul')}\u2603",
        }
        await create_secret(client, "SA_KEY")
        await put_value(client, "SA_KEY", values[shape])
        read = await read_value(client, "SA_KEY")
        assert read["value"] == values[shape]
        assert type(read["value"]) is type(values[shape])

    async def test_null_value_is_refused_and_the_old_value_kept(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        value = canaries.new("kept")
        await create_secret(client, "ACCESS_TOKEN", value)
        response = await client.put("/v1/secrets/ACCESS_TOKEN/value", json={"value": None})
        error = error_of(response, 422)
        assert (
            error["message"] == "value: a secret value can't be null (any other JSON value is fine)"
        )
        read = await read_value(client, "ACCESS_TOKEN")
        assert (read["value"], read["version"]) == (value, 1)

    @pytest.mark.parametrize(
        "raw", ['{"value": NaN}', '{"value": {"expires_in": Infinity}}', '{"value": [1, 1e999]}']
    )
    async def test_numbers_json_cannot_carry_are_refused(
        self, client: httpx.AsyncClient, canaries: Canaries, raw: str
    ) -> None:
        """Python's JSON parser lets NaN and 1e999 in; stored, they would read back as null."""
        value = canaries.new("kept")
        await create_secret(client, "ACCESS_TOKEN", value)
        response = await client.put(
            "/v1/secrets/ACCESS_TOKEN/value",
            content=raw,
            headers={"content-type": "application/json"},
        )
        error = error_of(response, 422)
        assert error["message"] == (
            "value: a secret value can't hold NaN or Infinity (JSON has no such numbers)"
        )
        assert (await read_value(client, "ACCESS_TOKEN"))["value"] == value

    async def test_a_value_larger_than_the_limit_is_refused_naming_it(
        self, client: httpx.AsyncClient
    ) -> None:
        # A 50 MB value was accepted; the default limit is 64 KiB of JSON text.
        await create_secret(client, "ACCESS_TOKEN")
        largest = "x" * (64 * 1024 - 2)  # its JSON text has two quotes more
        assert (await put_value(client, "ACCESS_TOKEN", largest))["version"] == 1
        for value in (largest + "x", {"k": ["x" * 1000] * 66}):
            response = await client.put("/v1/secrets/ACCESS_TOKEN/value", json={"value": value})
            error = error_of(response, 422)
            assert error["errors"][0]["path"] == "value"
            assert "at most 65536 bytes" in error["message"]
        response = await client.post("/v1/secrets", json={"name": "BIG", "value": largest + "x"})
        assert error_of(response, 422)["errors"][0]["path"] == "value"
        error_of(await client.get("/v1/secrets/BIG"), 404)
        assert (await read_value(client, "ACCESS_TOKEN"))["version"] == 1

    async def test_missing_value_is_refused(self, client: httpx.AsyncClient) -> None:
        await create_secret(client, "ACCESS_TOKEN")
        error = error_of(await client.put("/v1/secrets/ACCESS_TOKEN/value", json={}), 422)
        assert error["message"] == "value: Field required"

    async def test_unknown_field_is_refused(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        await create_secret(client, "ACCESS_TOKEN")
        response = await client.put(
            "/v1/secrets/ACCESS_TOKEN/value",
            json={"value": canaries.new("x"), "expires_in": 3600},
        )
        assert error_of(response, 422)["message"] == "expires_in: unknown field"

    async def test_value_of_an_unknown_secret_is_not_found(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        response = await client.put("/v1/secrets/NOPE/value", json={"value": canaries.new("x")})
        assert "'NOPE' does not exist" in error_of(response, 404)["message"]
        error_of(await client.get("/v1/secrets/NOPE"), 404)


class TestExpiry:
    async def test_aware_expiry_is_stored_in_utc(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        await create_secret(client, "ACCESS_TOKEN")
        written = await put_value(
            client, "ACCESS_TOKEN", canaries.new("v"), expires_at="2030-06-01T14:30:00+02:00"
        )
        assert (written["version"], written["expires_at"]) == (1, "2030-06-01T12:30:00Z")
        read = await read_value(client, "ACCESS_TOKEN")
        assert read["expires_at"] == "2030-06-01T12:30:00Z"
        described = (await client.get("/v1/secrets/ACCESS_TOKEN")).json()
        assert described["expires_at"] == "2030-06-01T12:30:00Z"

    async def test_naive_expiry_is_refused(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        await create_secret(client, "ACCESS_TOKEN")
        response = await client.put(
            "/v1/secrets/ACCESS_TOKEN/value",
            json={"value": canaries.new("v"), "expires_at": "2030-06-01T14:30:00"},
        )
        error = error_of(response, 422)
        assert error["message"] == "expires_at: Input should have timezone info"
        error_of(await client.get("/v1/secrets/ACCESS_TOKEN/value"), 404)

    async def test_naive_expiry_on_create_is_refused(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        response = await client.post(
            "/v1/secrets",
            json={"name": "TOKEN", "value": canaries.new("v"), "expires_at": "2030-06-01"},
        )
        assert error_of(response, 422)["message"].startswith("expires_at: ")
        error_of(await client.get("/v1/secrets/TOKEN"), 404)

    @pytest.mark.parametrize(
        "moment", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+14:00"], ids=["late", "early"]
    )
    async def test_expiry_that_does_not_fit_in_utc_is_refused(
        self, client: httpx.AsyncClient, canaries: Canaries, moment: str
    ) -> None:
        # Converting these to UTC overflowed (OverflowError: a 500) on both routes.
        await create_secret(client, "ACCESS_TOKEN")
        response = await client.put(
            "/v1/secrets/ACCESS_TOKEN/value",
            json={"value": canaries.new("v"), "expires_at": moment},
        )
        error = error_of(response, 422)
        assert error["errors"][0]["path"] == "expires_at"
        assert "outside years 1-9999 once converted to UTC" in error["message"]
        error_of(await client.get("/v1/secrets/ACCESS_TOKEN/value"), 404)

        response = await client.post(
            "/v1/secrets", json={"name": "TOKEN", "value": canaries.new("v"), "expires_at": moment}
        )
        assert error_of(response, 422)["errors"][0]["path"] == "expires_at"
        error_of(await client.get("/v1/secrets/TOKEN"), 404)

    async def test_the_farthest_expiry_that_fits_is_kept(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        await create_secret(client, "ACCESS_TOKEN")
        written = await put_value(
            client, "ACCESS_TOKEN", canaries.new("v"), expires_at="9999-12-31T23:59:59+00:00"
        )
        assert written["expires_at"] == "9999-12-31T23:59:59Z"

    async def test_a_write_without_expiry_clears_it(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        await create_secret(client, "ACCESS_TOKEN")
        await put_value(client, "ACCESS_TOKEN", canaries.new("v1"), expires_at="2030-01-01T00:00Z")
        await put_value(client, "ACCESS_TOKEN", canaries.new("v2"))
        assert (await read_value(client, "ACCESS_TOKEN"))["expires_at"] is None


class TestEnvironments:
    async def test_default_environment_is_the_services_own(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        value = canaries.new("test")
        await create_secret(client, "ACCESS_TOKEN")
        assert (await put_value(client, "ACCESS_TOKEN", value))["environment"] == "test"
        read = await read_value(client, "ACCESS_TOKEN", "test")
        assert (read["value"], read["environment"]) == (value, "test")

    async def test_each_environment_keeps_its_own_value_and_versions(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        await create_secret(client, "ACCESS_TOKEN")
        test_value, production_value = canaries.new("test"), canaries.new("production")
        await put_value(client, "ACCESS_TOKEN", canaries.new("test-old"))
        await put_value(client, "ACCESS_TOKEN", test_value)
        written = await put_value(
            client, "ACCESS_TOKEN", production_value, environment="production"
        )
        assert (written["environment"], written["version"]) == ("production", 1)
        test_read = await read_value(client, "ACCESS_TOKEN")
        assert (test_read["value"], test_read["version"]) == (test_value, 2)
        production_read = await read_value(client, "ACCESS_TOKEN", "production")
        assert (production_read["value"], production_read["version"]) == (production_value, 1)
        response = await client.get("/v1/secrets/ACCESS_TOKEN/value?environment=staging")
        assert "no value in environment 'staging'" in error_of(response, 404)["message"]
        described = (await client.get("/v1/secrets/ACCESS_TOKEN")).json()
        assert described["environments"] == ["production", "test"]
        assert (described["environment"], described["version"]) == ("test", 2)

    async def test_unknown_environment_is_refused(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        await create_secret(client, "ACCESS_TOKEN", canaries.new("v"))
        response = await client.put(
            "/v1/secrets/ACCESS_TOKEN/value",
            json={"value": canaries.new("x"), "environment": "prod"},
        )
        assert error_of(response, 422)["message"].startswith("environment: Input should be")
        response = await client.get("/v1/secrets/ACCESS_TOKEN/value?environment=prod")
        assert error_of(response, 422)["message"].startswith("environment: Input should be")

    async def test_shared_secret_has_one_value_for_all_environments(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        await create_secret(client, "CLIENT_ID", environment_specific=False)
        value = canaries.new("shared")
        written = await put_value(client, "CLIENT_ID", value)
        assert (written["environment"], written["version"]) == ("*", 1)
        read = await read_value(client, "CLIENT_ID")
        assert (read["value"], read["environment"]) == (value, "*")

    async def test_shared_secret_refuses_an_environment(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        value = canaries.new("shared")
        await create_secret(client, "CLIENT_ID", value, environment_specific=False)
        response = await client.put(
            "/v1/secrets/CLIENT_ID/value",
            json={"value": canaries.new("x"), "environment": "production"},
        )
        error = error_of(response, 422)
        assert error["message"] == (
            "secret 'CLIENT_ID' holds one value for all environments; omit 'environment'"
        )
        response = await client.get("/v1/secrets/CLIENT_ID/value?environment=test")
        assert "omit 'environment'" in error_of(response, 422)["message"]
        read = await read_value(client, "CLIENT_ID")
        assert (read["value"], read["version"]) == (value, 1)


class TestReadValue:
    async def test_secret_without_a_value_says_how_to_set_one(
        self, client: httpx.AsyncClient
    ) -> None:
        await create_secret(client, "ACCESS_TOKEN")
        error = error_of(await client.get("/v1/secrets/ACCESS_TOKEN/value"), 404)
        assert error["type"] == "not_found"
        assert error["message"] == (
            "secret 'ACCESS_TOKEN' has no value in environment 'test'; "
            "set one with PUT /v1/secrets/ACCESS_TOKEN/value"
        )

    async def test_shared_secret_without_a_value_names_no_environment(
        self, client: httpx.AsyncClient
    ) -> None:
        await create_secret(client, "CLIENT_ID", environment_specific=False)
        error = error_of(await client.get("/v1/secrets/CLIENT_ID/value"), 404)
        assert error["message"] == (
            "secret 'CLIENT_ID' has no value; set one with PUT /v1/secrets/CLIENT_ID/value"
        )

    async def test_unknown_secret_is_not_found(self, client: httpx.AsyncClient) -> None:
        error = error_of(await client.get("/v1/secrets/NOPE/value"), 404)
        assert error["message"] == "secret 'NOPE' does not exist"


class TestConcurrentWrites:
    async def test_simultaneous_writes_each_win_or_conflict_and_history_stays_whole(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        await create_secret(client, "ACCESS_TOKEN", canaries.new("first"))
        values = [canaries.new(f"racer{n}") for n in range(6)]
        responses = await asyncio.gather(
            *(client.put("/v1/secrets/ACCESS_TOKEN/value", json={"value": v}) for v in values)
        )
        assert {r.status_code for r in responses} <= {200, 409}, [r.text for r in responses]
        won = [r.json()["version"] for r in responses if r.status_code == 200]
        assert sorted(won) == list(range(2, 2 + len(won)))
        read = await read_value(client, "ACCESS_TOKEN")
        assert read["version"] == 1 + len(won)
        assert read["value"] in values
        history = (await client.get("/v1/secrets/ACCESS_TOKEN/versions")).json()
        assert [v["version"] for v in history] == list(range(1 + len(won), 0, -1))
