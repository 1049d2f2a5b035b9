"""The value cache on SQLite: reads answer from memory while the database is unchanged, and a
commit by anyone (this app, another process) is seen by the very next read."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event

from app.config import Settings
from app.secrets.cache import CachedValue, ValueCache
from app.secrets.schemas import SecretValueRead
from tests.auth.conftest import Callers
from tests.auth.conftest import callers as callers  # the fixture, for this module
from tests.conftest import create_secret
from tests.processes import replica_env, run_cli

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def sqlite_path(url: str) -> Path:
    """The file of a sqlite:/// URL."""
    return Path(url.removeprefix("sqlite:///"))


async def read(client: httpx.AsyncClient, name: str) -> httpx.Response:
    response = await client.get(f"/v1/secrets/{name}/value")
    assert response.status_code == 200, response.text
    return response


@sqlite_only
class TestOnSqlite:
    async def test_a_repeated_read_answers_from_memory_with_the_same_body(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        await create_secret(client, "TOKEN", {"access": "v1", "n": 1})
        first = await read(client, "TOKEN")
        cache: ValueCache = app.state.value_cache
        assert cache.enabled
        cached = cache.get("TOKEN", None)
        assert cached is not None and cached.read.version == 1

        second = await read(client, "TOKEN")

        assert second.content == first.content
        assert second.json() == {
            "name": "TOKEN",
            "value": {"access": "v1", "n": 1},
            "version": 1,
            "expires_at": None,
            "environment": "test",
        }

    async def test_a_write_through_the_api_is_read_at_once(self, client: httpx.AsyncClient) -> None:
        await create_secret(client, "TOKEN", "v1")
        assert (await read(client, "TOKEN")).json()["value"] == "v1"

        response = await client.put("/v1/secrets/TOKEN/value", json={"value": "v2"})
        assert response.status_code == 200, response.text

        again = (await read(client, "TOKEN")).json()
        assert (again["value"], again["version"]) == ("v2", 2)

    async def test_a_write_by_another_process_is_read_at_once(
        self, client: httpx.AsyncClient, settings: Settings, database_url: str, tmp_path: Path
    ) -> None:
        await create_secret(client, "TOKEN", "v1")
        assert (await read(client, "TOKEN")).json()["value"] == "v1"

        env = replica_env(settings, database_url, str(tmp_path)) | {"NEW_TOKEN": "v2-from-cli"}
        done = run_cli("secrets", "set", "TOKEN", "--from-env", "NEW_TOKEN", env=env)
        assert done.returncode == 0, done.stderr

        again = (await read(client, "TOKEN")).json()
        assert (again["value"], again["version"]) == ("v2-from-cli", 2)

    async def test_each_environment_is_kept_apart(self, client: httpx.AsyncClient) -> None:
        await create_secret(client, "TOKEN", "in-test", environment_specific=True)
        response = await client.put(
            "/v1/secrets/TOKEN/value", json={"value": "in-prod", "environment": "production"}
        )
        assert response.status_code == 200, response.text

        for _ in range(2):
            assert (await read(client, "TOKEN")).json()["value"] == "in-test"
            prod = await client.get("/v1/secrets/TOKEN/value?environment=production")
            assert prod.json()["value"] == "in-prod"

    async def test_permissions_are_checked_on_every_read(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        await create_secret(client, "TOKEN", "v1")
        await read(client, "TOKEN")
        assert app.state.value_cache.get("TOKEN", None) is not None

        anonymous = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://tokenfarm.test"
        )
        async with anonymous:
            refused = await anonymous.get("/v1/secrets/TOKEN/value")
        assert refused.status_code == 401
        assert "v1" not in refused.text

    def test_a_value_read_while_something_was_committed_is_not_kept(
        self, database_url: str, app: FastAPI
    ) -> None:
        cache = ValueCache.for_database(database_url)
        try:
            read_at = cache.version()
            writer = sqlite3.connect(sqlite_path(database_url))
            writer.execute("CREATE TABLE scratch (x INTEGER)")
            writer.commit()
            writer.close()
            value = SecretValueRead(
                name="TOKEN", value="old", version=1, expires_at=None, environment="test"
            )
            cache.put("TOKEN", None, CachedValue.of(value), read_at)
            assert cache.get("TOKEN", None) is None

            cache.put("TOKEN", None, CachedValue.of(value), cache.version())
            assert cache.get("TOKEN", None) is not None
        finally:
            cache.close()


class TestWhereItHoldsNothing:
    def test_postgresql_and_in_memory_databases_read_from_the_database(self) -> None:
        for url in ("postgresql://postgres@127.0.0.1:5432/test", "sqlite:///:memory:"):
            cache = ValueCache.for_database(url)
            assert not cache.enabled
            assert cache.version() is None
            value = SecretValueRead(
                name="TOKEN", value="v", version=1, expires_at=None, environment="test"
            )
            cache.put("TOKEN", None, CachedValue.of(value), cache.version())
            assert cache.get("TOKEN", None) is None


@sqlite_only
class TestCachedReadsBeforeRouting:
    """The fast path (app/secrets/router.py:read_secret_value_fast) answers a repeated plain read
    without touching the database,
    with the route's exact answer, and leaves everything else to the route."""

    async def test_a_repeated_read_runs_no_statement_and_answers_the_same(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        await create_secret(client, "TOKEN", "v1")
        first = await read(client, "TOKEN")
        statements: list[str] = []

        def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            statements.append(statement)

        event.listen(app.state.engine.sync_engine, "before_cursor_execute", count)
        try:
            second = await read(client, "TOKEN")
        finally:
            event.remove(app.state.engine.sync_engine, "before_cursor_execute", count)

        assert statements == []
        assert second.content == first.content
        assert second.headers["content-type"] == first.headers["content-type"]
        assert second.headers["content-length"] == first.headers["content-length"]
        assert second.headers["x-request-id"] != first.headers["x-request-id"]

    async def test_a_caller_without_the_permission_is_refused_by_the_route(
        self, app: FastAPI, client: httpx.AsyncClient, callers: Callers
    ) -> None:
        await create_secret(client, "TOKEN", "v1")
        await create_secret(client, "OTHER", "other")
        reader = await callers.holding("secrets.read:OTHER")
        assert (await reader.get("/v1/secrets/OTHER/value")).status_code == 200  # known now
        await read(client, "TOKEN")  # and the value is in the cache
        assert app.state.value_cache.get("TOKEN", None) is not None

        refused = await reader.get("/v1/secrets/TOKEN/value")

        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["permission"] == "secrets.read:TOKEN"
        assert "v1" not in refused.text

    async def test_other_credential_shapes_and_query_strings_go_to_the_route(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        await create_secret(client, "TOKEN", "v1")
        await read(client, "TOKEN")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t.test") as http:
            basic = await http.get(
                "/v1/secrets/TOKEN/value", headers={"Authorization": "Basic dXNlcjpwYXNz"}
            )
            anonymous = await http.get("/v1/secrets/TOKEN/value")
        assert basic.status_code == anonymous.status_code == 401
        bad_query = await client.get("/v1/secrets/TOKEN/value?min_valid_seconds=-1")
        assert bad_query.status_code == 422
        fine_query = await client.get("/v1/secrets/TOKEN/value?min_valid_seconds=0")
        assert fine_query.status_code == 200 and fine_query.json()["value"] == "v1"
