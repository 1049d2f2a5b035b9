"""History and rollback: versions newest first (no values), rollback as a new version, pruning."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import create_secret
from tests.secrets.conftest import Canaries, error_of, put_value, read_value


async def history(
    client: httpx.AsyncClient, name: str, environment: str | None = None
) -> list[dict[str, Any]]:
    """The versions of a secret, failing the test on any error."""
    params = {"environment": environment} if environment else {}
    response = await client.get(f"/v1/secrets/{name}/versions", params=params)
    assert response.status_code == 200, response.text
    versions: list[dict[str, Any]] = response.json()
    return versions


class TestVersionHistory:
    async def test_history_is_newest_first_with_the_current_one_flagged(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        await create_secret(client, "ACCESS_TOKEN", canaries.new("v1"))
        await put_value(client, "ACCESS_TOKEN", canaries.new("v2"))
        await put_value(
            client, "ACCESS_TOKEN", canaries.new("v3"), expires_at="2030-01-01T00:00:00Z"
        )
        versions = await history(client, "ACCESS_TOKEN")
        assert [v["version"] for v in versions] == [3, 2, 1]
        assert [v["current"] for v in versions] == [True, False, False]
        assert [v["source"] for v in versions] == ["manual", "manual", "create"]
        assert {v["environment"] for v in versions} == {"test"}
        assert versions[0]["expires_at"] == "2030-01-01T00:00:00Z"
        assert versions[1]["expires_at"] is None
        assert all(v["actor"] and v["created_at"] for v in versions)
        assert all("value" not in v and "ciphertext" not in v for v in versions)

    async def test_history_is_per_environment(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        await create_secret(client, "ACCESS_TOKEN", canaries.new("test"))
        await put_value(client, "ACCESS_TOKEN", canaries.new("prod1"), environment="production")
        await put_value(client, "ACCESS_TOKEN", canaries.new("prod2"), environment="production")
        assert [v["version"] for v in await history(client, "ACCESS_TOKEN")] == [1]
        production = await history(client, "ACCESS_TOKEN", "production")
        assert [(v["version"], v["environment"]) for v in production] == [
            (2, "production"),
            (1, "production"),
        ]
        assert await history(client, "ACCESS_TOKEN", "staging") == []

    async def test_shared_secret_history_refuses_an_environment(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        await create_secret(client, "CLIENT_ID", canaries.new("v"), environment_specific=False)
        assert [v["environment"] for v in await history(client, "CLIENT_ID")] == ["*"]
        response = await client.get("/v1/secrets/CLIENT_ID/versions?environment=test")
        assert "omit 'environment'" in error_of(response, 422)["message"]

    async def test_secret_without_values_has_an_empty_history(
        self, client: httpx.AsyncClient
    ) -> None:
        await create_secret(client, "ACCESS_TOKEN")
        assert await history(client, "ACCESS_TOKEN") == []

    async def test_unknown_secret_has_no_history(self, client: httpx.AsyncClient) -> None:
        error_of(await client.get("/v1/secrets/NOPE/versions"), 404)


class TestRollback:
    async def test_rollback_writes_the_old_value_as_a_new_version(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        values = [canaries.new(f"v{n}") for n in range(1, 4)]
        await create_secret(client, "ACCESS_TOKEN", values[0], expires_at="2030-01-01T00:00:00Z")
        for value in values[1:]:
            await put_value(client, "ACCESS_TOKEN", value)
        response = await client.post("/v1/secrets/ACCESS_TOKEN/rollback", json={"version": 1})
        assert response.status_code == 200, response.text
        assert response.json() == {
            "name": "ACCESS_TOKEN",
            "version": 4,
            "environment": "test",
            "expires_at": "2030-01-01T00:00:00Z",
        }
        read = await read_value(client, "ACCESS_TOKEN")
        assert (read["value"], read["version"]) == (values[0], 4)
        assert read["expires_at"] == "2030-01-01T00:00:00Z"
        versions = await history(client, "ACCESS_TOKEN")
        assert [(v["version"], v["source"], v["current"]) for v in versions] == [
            (4, "rollback", True),
            (3, "manual", False),
            (2, "manual", False),
            (1, "create", False),
        ]

    async def test_rollback_of_a_json_value_keeps_its_shape(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        key = {"private_key": canaries.new("key"), "kid": 7}
        await create_secret(client, "SA_KEY", key)
        await put_value(client, "SA_KEY", {"private_key": canaries.new("other"), "kid": 8})
        response = await client.post("/v1/secrets/SA_KEY/rollback", json={"version": 1})
        assert response.status_code == 200, response.text
        assert (await read_value(client, "SA_KEY"))["value"] == key

    async def test_rollback_stays_in_its_environment(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        test_value = canaries.new("test")
        first, second = canaries.new("prod1"), canaries.new("prod2")
        await create_secret(client, "ACCESS_TOKEN", test_value)
        await put_value(client, "ACCESS_TOKEN", first, environment="production")
        await put_value(client, "ACCESS_TOKEN", second, environment="production")
        response = await client.post(
            "/v1/secrets/ACCESS_TOKEN/rollback", json={"version": 1, "environment": "production"}
        )
        assert response.status_code == 200, response.text
        assert (response.json()["environment"], response.json()["version"]) == ("production", 3)
        production = await read_value(client, "ACCESS_TOKEN", "production")
        assert (production["value"], production["version"]) == (first, 3)
        test = await read_value(client, "ACCESS_TOKEN")
        assert (test["value"], test["version"]) == (test_value, 1)

    async def test_rollback_of_a_shared_secret(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        first = canaries.new("first")
        await create_secret(client, "CLIENT_ID", first, environment_specific=False)
        await put_value(client, "CLIENT_ID", canaries.new("second"))
        response = await client.post("/v1/secrets/CLIENT_ID/rollback", json={"version": 1})
        assert response.status_code == 200, response.text
        assert (response.json()["environment"], response.json()["version"]) == ("*", 3)
        assert (await read_value(client, "CLIENT_ID"))["value"] == first

    async def test_rollback_to_a_version_that_does_not_exist_changes_nothing(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        value = canaries.new("current")
        await create_secret(client, "ACCESS_TOKEN", value)
        response = await client.post("/v1/secrets/ACCESS_TOKEN/rollback", json={"version": 2})
        error = error_of(response, 404)
        assert error["message"] == "secret 'ACCESS_TOKEN' has no version 2 (see its versions)"
        response = await client.post(
            "/v1/secrets/ACCESS_TOKEN/rollback", json={"version": 1, "environment": "production"}
        )
        error_of(response, 404)
        read = await read_value(client, "ACCESS_TOKEN")
        assert (read["value"], read["version"]) == (value, 1)
        assert len(await history(client, "ACCESS_TOKEN")) == 1

    async def test_rollback_needs_a_positive_version(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        await create_secret(client, "ACCESS_TOKEN", canaries.new("v"))
        for body in ({"version": 0}, {}, {"version": "latest"}, {"version": 2**63}):
            response = await client.post("/v1/secrets/ACCESS_TOKEN/rollback", json=body)
            assert error_of(response, 422)["message"].startswith("version: ")

    async def test_rollback_of_an_unknown_secret_is_not_found(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.post("/v1/secrets/NOPE/rollback", json={"version": 1})
        error_of(response, 404)


class TestPruning:
    async def test_the_newest_twenty_versions_are_kept(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        await create_secret(client, "ACCESS_TOKEN")
        values = [canaries.new(f"v{n}") for n in range(1, 26)]
        for value in values:
            await put_value(client, "ACCESS_TOKEN", value)
        versions = await history(client, "ACCESS_TOKEN")
        assert [v["version"] for v in versions] == list(range(25, 5, -1))
        read = await read_value(client, "ACCESS_TOKEN")
        assert (read["value"], read["version"]) == (values[-1], 25)
        error_of(await client.post("/v1/secrets/ACCESS_TOKEN/rollback", json={"version": 5}), 404)
        response = await client.post("/v1/secrets/ACCESS_TOKEN/rollback", json={"version": 6})
        assert response.status_code == 200, response.text
        assert (await read_value(client, "ACCESS_TOKEN"))["value"] == values[5]
        assert [v["version"] for v in await history(client, "ACCESS_TOKEN")] == list(
            range(26, 6, -1)
        )

    async def test_pruning_one_environment_leaves_the_others_alone(
        self, client: httpx.AsyncClient, canaries: Canaries
    ) -> None:
        await create_secret(client, "ACCESS_TOKEN")
        await put_value(client, "ACCESS_TOKEN", canaries.new("prod"), environment="production")
        for number in range(25):
            await put_value(client, "ACCESS_TOKEN", canaries.new(f"test{number}"))
        assert len(await history(client, "ACCESS_TOKEN")) == 20
        production = await history(client, "ACCESS_TOKEN", "production")
        assert [v["version"] for v in production] == [1]
