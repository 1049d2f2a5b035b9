"""API keys of service accounts: shown once, stored hashed, and refused once revoked or expired."""

from __future__ import annotations

import asyncio
import secrets
from datetime import datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from app.db import utcnow
from tests.conftest import create_secret

ACCOUNT = "ci-deployer"
KEYS = f"/v1/service-accounts/{ACCOUNT}/api-keys"


async def create_account(
    client: httpx.AsyncClient, permissions: tuple[str, ...] = ("secrets.read:ALLOWED",)
) -> None:
    """A role with `permissions` and the service account `ci-deployer` holding it."""
    response = await client.post(
        "/v1/roles", json={"name": "reader", "permissions": list(permissions)}
    )
    assert response.status_code == 201, response.text
    response = await client.post(
        "/v1/service-accounts", json={"name": ACCOUNT, "roles": ["reader"]}
    )
    assert response.status_code == 201, response.text


async def create_key(
    client: httpx.AsyncClient, name: str = "ci", expires_at: datetime | None = None
) -> str:
    """A new key of `ci-deployer`; answers the key, which only this answer ever shows."""
    body: dict[str, str] = {"name": name}
    if expires_at is not None:
        body["expires_at"] = expires_at.isoformat()
    response = await client.post(KEYS, json=body)
    assert response.status_code == 201, response.text
    created = response.json()
    assert set(created) == {"name", "key", "expires_at"}
    assert created["name"] == name
    key: str = created["key"]
    return key


async def read_with(http: httpx.AsyncClient, key: str, name: str = "ALLOWED") -> httpx.Response:
    """Read a secret's value with `key` as the only credential."""
    return await http.get(f"/v1/secrets/{name}/value", headers={"Authorization": f"Bearer {key}"})


def assert_not_authenticated(response: httpx.Response) -> None:
    """A 401 in the error shape with a bearer challenge."""
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["type"] == "not_authenticated"


@pytest.fixture
async def key(client: httpx.AsyncClient) -> str:
    """A key of `ci-deployer`, whose role may read the secret ALLOWED (and nothing else)."""
    await create_secret(client, "ALLOWED", "allowed-value")
    await create_secret(client, "OTHER", "other-value")
    await create_account(client)
    return await create_key(client)


class TestKeyMaterial:
    async def test_key_is_prefixed_and_long(self, key: str) -> None:
        assert key.startswith("tfk_")
        # 16 hex digits of key id and 32 random bytes in URL-safe base64.
        assert len(key) >= len("tfk_") + 16 + 1 + 43

    async def test_keys_are_unique(self, client: httpx.AsyncClient, key: str) -> None:
        assert await create_key(client, "second") != key

    async def test_listing_never_shows_key_material(
        self, client: httpx.AsyncClient, key: str
    ) -> None:
        response = await client.get(KEYS)
        assert response.status_code == 200, response.text
        listed = response.json()
        assert [k["name"] for k in listed] == ["ci"]
        assert "key" not in listed[0]
        secret_part = key.split("_", 2)[2]
        assert key not in response.text and secret_part not in response.text
        assert listed[0]["key_id"] in key

    async def test_stored_row_holds_only_a_hash(self, app: FastAPI, key: str) -> None:
        secret_part = key.split("_", 2)[2]
        async with app.state.session_factory() as session:
            rows = (await session.execute(text("SELECT * FROM api_key"))).mappings().all()
        assert len(rows) == 1
        for column, value in rows[0].items():
            assert secret_part not in str(value), f"api_key.{column} holds the key"
            assert key not in str(value), f"api_key.{column} holds the key"

    async def test_duplicate_key_name_is_refused(self, client: httpx.AsyncClient, key: str) -> None:
        response = await client.post(KEYS, json={"name": "ci"})
        assert response.status_code == 409, response.text
        assert key not in response.text


class TestKeyAuthentication:
    async def test_key_acts_as_its_service_account_with_its_roles(
        self, anonymous_client: httpx.AsyncClient, key: str
    ) -> None:
        allowed = await read_with(anonymous_client, key)
        assert allowed.status_code == 200, allowed.text
        assert allowed.json()["value"] == "allowed-value"

        other = await read_with(anonymous_client, key, "OTHER")
        assert other.status_code == 403, other.text
        assert other.json()["error"]["permission"] == "secrets.read:OTHER"

        listing = await anonymous_client.get(
            "/v1/secrets", headers={"Authorization": f"Bearer {key}"}
        )
        assert listing.status_code == 403, listing.text

    async def test_runs_and_versions_name_the_service_account(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient
    ) -> None:
        await create_secret(client, "ALLOWED", "allowed-value")
        await create_account(client, ("secrets.manage",))
        key = await create_key(client)
        response = await anonymous_client.put(
            "/v1/secrets/ALLOWED/value",
            json={"value": "by-key"},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert response.status_code == 200, response.text
        versions = (await client.get("/v1/secrets/ALLOWED/versions")).json()
        assert f"service_account:{ACCOUNT}" in str(versions[0])

    async def test_role_change_applies_to_existing_keys(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient, key: str
    ) -> None:
        response = await client.patch(
            "/v1/roles/reader", json={"permissions": ["secrets.read:OTHER"]}
        )
        assert response.status_code == 200, response.text
        assert (await read_with(anonymous_client, key)).status_code == 403
        assert (await read_with(anonymous_client, key, "OTHER")).status_code == 200

    async def test_last_used_at_is_set_on_use(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient, key: str
    ) -> None:
        assert (await client.get(KEYS)).json()[0]["last_used_at"] is None
        before = utcnow()
        assert (await read_with(anonymous_client, key)).status_code == 200
        used = (await client.get(KEYS)).json()[0]["last_used_at"]
        assert used is not None
        assert datetime.fromisoformat(used) >= before - timedelta(seconds=1)


class TestRefusedKeys:
    async def test_revoked_key_is_refused(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient, key: str
    ) -> None:
        other = await create_key(client, "other")
        assert (await read_with(anonymous_client, key)).status_code == 200
        assert (await client.delete(f"{KEYS}/ci")).status_code == 204
        assert_not_authenticated(await read_with(anonymous_client, key))
        # Revoking one key leaves the account's other keys working.
        assert (await read_with(anonymous_client, other)).status_code == 200
        assert [k["name"] for k in (await client.get(KEYS)).json()] == ["other"]

    async def test_revoking_an_unknown_key_is_404(
        self, client: httpx.AsyncClient, key: str
    ) -> None:
        response = await client.delete(f"{KEYS}/nope")
        assert response.status_code == 404, response.text

    async def test_expired_key_is_refused(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient
    ) -> None:
        await create_secret(client, "ALLOWED", "allowed-value")
        await create_account(client)
        expires_at = utcnow() + timedelta(seconds=2)
        key = await create_key(client, "short-lived", expires_at=expires_at)
        assert (await read_with(anonymous_client, key)).status_code == 200
        await asyncio.sleep((expires_at - utcnow()).total_seconds() + 0.2)
        assert_not_authenticated(await read_with(anonymous_client, key))

    async def test_expiry_in_the_past_is_refused_at_creation(
        self, client: httpx.AsyncClient
    ) -> None:
        await create_account(client)
        past = (utcnow() - timedelta(minutes=1)).isoformat()
        response = await client.post(KEYS, json={"name": "old", "expires_at": past})
        assert response.status_code == 422, response.text

    async def test_key_of_a_deleted_service_account_is_refused(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient, key: str
    ) -> None:
        assert (await read_with(anonymous_client, key)).status_code == 200
        response = await client.delete(f"/v1/service-accounts/{ACCOUNT}")
        assert response.status_code == 204, response.text
        assert_not_authenticated(await read_with(anonymous_client, key))
        # A new account of the same name does not inherit the old keys.
        await client.post("/v1/service-accounts", json={"name": ACCOUNT, "roles": ["reader"]})
        assert_not_authenticated(await read_with(anonymous_client, key))

    async def test_wrong_secret_with_a_real_key_id_is_refused(
        self, anonymous_client: httpx.AsyncClient, key: str
    ) -> None:
        key_id = key.split("_", 2)[1]
        forged = f"tfk_{key_id}_{secrets.token_urlsafe(32)}"
        assert_not_authenticated(await read_with(anonymous_client, forged))

    @pytest.mark.parametrize(
        "forged",
        [
            pytest.param(f"tfk_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}", id="unknown"),
            pytest.param("tfk_", id="prefix_only"),
            pytest.param("tfk_short_secret", id="short_id"),
            pytest.param(f"tfk_{'g' * 16}_{'a' * 43}", id="id_not_hex"),
            pytest.param(f"tfk_{'a' * 16}_", id="no_secret"),
            pytest.param(f"tfk_{'a' * 16}_{'a' * 43}!", id="secret_not_base64"),
            pytest.param(f"tfk_{'a' * 16}_{'a' * 500}", id="secret_too_long"),
            pytest.param(f"TFK_{secrets.token_hex(8)}_{'a' * 43}", id="upper_prefix"),
        ],
    )
    async def test_unknown_or_malformed_key_is_refused(
        self, anonymous_client: httpx.AsyncClient, key: str, forged: str
    ) -> None:
        assert_not_authenticated(await read_with(anonymous_client, forged))

    async def test_key_with_a_real_prefix_of_another_key_is_refused(
        self, anonymous_client: httpx.AsyncClient, key: str
    ) -> None:
        assert_not_authenticated(await read_with(anonymous_client, key[:-1]))
        assert_not_authenticated(await read_with(anonymous_client, key + "A"))
