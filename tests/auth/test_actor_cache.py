"""The actor cache: a credential is looked up once for a few seconds, and changes still bite.

Changes made through the app take effect on the next request; a change this process doesn't see
(another replica or the CLI, simulated by SQL on a connection outside the ORM) takes effect once
the entry's lifetime is over, and no entry outlives its API key.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from app.auth.actor import Actor
from app.auth.cache import ActorCache
from app.config import Settings
from app.db import utcnow
from tests.auth.conftest import Callers
from tests.conftest import create_secret


def cached_credentials(app: FastAPI) -> int:
    """How many credentials the app's cache holds now."""
    cache: ActorCache = app.state.actor_cache
    return len(cache._entries)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A one-second lifetime, so the tests can wait it out."""
    return settings.model_copy(update={"auth_cache_seconds": 1.0})


class TestInvalidation:
    async def test_a_key_revoked_through_the_api_fails_on_the_next_request(
        self, app: FastAPI, client: httpx.AsyncClient, callers: Callers
    ) -> None:
        await create_secret(client, "X", "x-value")
        name = await callers.account("secrets.read:X")
        reader = callers.client(await callers.key(name, "k1"))
        assert (await reader.get("/v1/secrets/X/value")).status_code == 200
        assert cached_credentials(app) >= 1

        response = await client.delete(f"/v1/service-accounts/{name}/api-keys/k1")
        assert response.status_code == 204, response.text

        assert (await reader.get("/v1/secrets/X/value")).status_code == 401

    async def test_a_permission_removed_through_the_api_is_gone_on_the_next_request(
        self, client: httpx.AsyncClient, callers: Callers
    ) -> None:
        await create_secret(client, "X", "x-value")
        reader = await callers.holding("secrets.read:X", name="reader")
        assert (await reader.get("/v1/secrets/X/value")).status_code == 200

        response = await client.patch("/v1/roles/reader", json={"permissions": []})
        assert response.status_code == 200, response.text

        assert (await reader.get("/v1/secrets/X/value")).status_code == 403

    async def test_a_change_made_elsewhere_takes_effect_within_the_lifetime(
        self, app: FastAPI, client: httpx.AsyncClient, callers: Callers
    ) -> None:
        await create_secret(client, "X", "x-value")
        reader = await callers.holding("secrets.read:X", name="reader")
        assert (await reader.get("/v1/secrets/X/value")).status_code == 200

        # Another replica revokes every key: plain SQL, which this process's ORM never sees.
        async with app.state.engine.begin() as connection:
            await connection.execute(text("DELETE FROM api_key"))

        # Within the lifetime the cached caller is still known here...
        assert (await reader.get("/v1/secrets/X/value")).status_code == 200
        await asyncio.sleep(1.1)
        # ...and not a moment after it.
        assert (await reader.get("/v1/secrets/X/value")).status_code == 401

    async def test_an_entry_never_outlives_its_api_key(
        self, app: FastAPI, client: httpx.AsyncClient, callers: Callers
    ) -> None:
        app.state.actor_cache.ttl_seconds = 300
        await create_secret(client, "X", "x-value")
        name = await callers.account("secrets.read:X")
        expires_at = utcnow() + timedelta(seconds=1)
        response = await client.post(
            f"/v1/service-accounts/{name}/api-keys",
            json={"name": "short", "expires_at": expires_at.isoformat()},
        )
        assert response.status_code == 201, response.text
        reader = callers.client(response.json()["key"])
        assert (await reader.get("/v1/secrets/X/value")).status_code == 200

        await asyncio.sleep(max(0.0, (expires_at - utcnow()).total_seconds()) + 0.1)

        refused = await reader.get("/v1/secrets/X/value")
        assert refused.status_code == 401
        assert "expired" in refused.json()["error"]["message"]

    async def test_bookkeeping_of_last_use_does_not_empty_the_cache(
        self, app: FastAPI, client: httpx.AsyncClient, callers: Callers
    ) -> None:
        await create_secret(client, "X", "x-value")
        first = await callers.holding("secrets.read:X")
        assert (await first.get("/v1/secrets/X/value")).status_code == 200
        # A new key's first use writes its last_used_at: not a change of who may do what.
        second = await callers.holding("secrets.read:X")
        generation = app.state.actor_cache.generation
        assert (await second.get("/v1/secrets/X/value")).status_code == 200
        assert app.state.actor_cache.generation == generation


class TestEntries:
    def test_a_lookup_that_raced_a_change_is_not_kept(self) -> None:
        cache = ActorCache(ttl_seconds=60)
        actor = Actor(kind="service_account", name="bot", permissions=frozenset({"x"}))
        started_at = cache.generation
        cache.clear()  # a change committed while the lookup ran
        cache.put("tfk_credential", actor, generation=started_at)
        assert cache.get("tfk_credential") is None

        cache.put("tfk_credential", actor, generation=cache.generation)
        assert cache.get("tfk_credential") == actor

    def test_entries_expire_and_a_zero_lifetime_keeps_nothing(self) -> None:
        now = [100.0]
        cache = ActorCache(ttl_seconds=5, clock=lambda: now[0])
        actor = Actor(kind="anonymous", name="anonymous", permissions=frozenset())
        cache.put("", actor, generation=cache.generation)
        now[0] += 4.9
        assert cache.get("") == actor
        now[0] += 0.2
        assert cache.get("") is None

        off = ActorCache(ttl_seconds=0)
        off.put("", actor, generation=off.generation)
        assert off.get("") is None

    def test_the_credential_itself_is_not_kept(self) -> None:
        cache = ActorCache(ttl_seconds=60)
        credential = "tfk_0123456789abcdef_" + "s" * 43
        actor = Actor(kind="service_account", name="bot", permissions=frozenset())
        cache.put(credential, actor, generation=cache.generation)
        assert cache.get(credential) == actor
        assert all(credential.encode() not in key for key in cache._entries)
