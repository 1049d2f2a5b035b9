"""The accounts API: roles, users, service accounts and their API keys."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from app.auth.accounts import AccountStore
from app.auth.actor import Actor
from app.auth.models import User
from app.auth.schemas import UserUpdate
from app.db import utcnow
from tests.auth.conftest import Callers, add_user, error_of
from tests.conftest import OWNER_EMAIL

PASSWORD = "canary-password-3f9e1c7a"  # a canary: no answer may carry it
SYSTEM = Actor(kind="system", name="test", permissions=frozenset({"*"}))


@pytest.fixture
def no_password_in_answers(client: httpx.AsyncClient) -> Iterator[list[str]]:
    """Fails the test when any answer to the owner carries `PASSWORD` or a password hash."""
    seen: list[str] = []

    async def check(response: httpx.Response) -> None:
        await response.aread()
        where = f"{response.request.method} {response.request.url.path}"
        seen.append(where)
        assert PASSWORD not in response.text, f"{where} leaks the password"
        assert "$argon2" not in response.text, f"{where} leaks a password hash"
        assert "password_hash" not in response.text, f"{where} names the hash"

    client.event_hooks["response"].append(check)
    yield seen
    client.event_hooks["response"].remove(check)


class TestRoles:
    async def test_create_read_list_change_and_delete(self, client: httpx.AsyncClient) -> None:
        body = {
            "name": "oauth-refresher",
            "description": "Refreshes the OAuth token",
            "permissions": ["services.run:oauth", "secrets.update_from_service:ACCESS_TOKEN"],
        }
        response = await client.post("/v1/roles", json=body)
        assert response.status_code == 201, response.text
        assert response.json() == {**body, "builtin": False}

        assert (await client.get("/v1/roles/oauth-refresher")).json() == {**body, "builtin": False}
        names = [role["name"] for role in (await client.get("/v1/roles")).json()]
        assert names == ["anonymous", "oauth-refresher", "owner"]

        response = await client.patch(
            "/v1/roles/oauth-refresher", json={"permissions": ["services.run:*"]}
        )
        assert response.status_code == 200, response.text
        assert response.json()["permissions"] == ["services.run:*"]
        assert response.json()["description"] == "Refreshes the OAuth token"

        response = await client.delete("/v1/roles/oauth-refresher")
        assert response.status_code == 204 and response.content == b""
        error_of(await client.get("/v1/roles/oauth-refresher"), 404)
        error_of(await client.delete("/v1/roles/oauth-refresher"), 404)

    async def test_duplicate_name_is_409(self, client: httpx.AsyncClient) -> None:
        assert (await client.post("/v1/roles", json={"name": "dup"})).status_code == 201
        error = error_of(await client.post("/v1/roles", json={"name": "dup"}), 409)
        assert "dup" in error["message"]
        error_of(await client.post("/v1/roles", json={"name": "owner"}), 409)

    async def test_repeated_permissions_are_kept_once(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/v1/roles", json={"name": "twice", "permissions": ["runs.read", "runs.read"]}
        )
        assert response.status_code == 201, response.text
        assert response.json()["permissions"] == ["runs.read"]

    @pytest.mark.parametrize(
        ("permission", "says"),
        [
            ("secrets.raed:X", "did you mean 'secrets.read:X'?"),
            ("foo", "known: *, secrets.manage"),
            ("", "secrets.read:NAME"),
            ("secrets.manage:X", "takes no ':NAME'"),
            ("services.run:OAuth", "SLUG or SLUG/READABLE_ID"),
            ("secrets.read:A*B", "a secret name"),
        ],
    )
    async def test_a_bad_permission_is_422_saying_what_is_allowed(
        self, client: httpx.AsyncClient, permission: str, says: str
    ) -> None:
        body = {"name": "bad", "permissions": ["runs.read", permission]}
        error = error_of(await client.post("/v1/roles", json=body), 422)
        assert error["type"] == "validation_error"
        assert repr(permission) in error["message"] and says in error["message"], error
        assert error["errors"][0]["path"] == "permissions[1]"
        error_of(await client.get("/v1/roles/bad"), 404)

        assert (await client.post("/v1/roles", json={"name": "good"})).status_code == 201
        response = await client.patch("/v1/roles/good", json={"permissions": [permission]})
        assert says in error_of(response, 422)["message"]

    @pytest.mark.parametrize(
        "body",
        [{"name": "Upper"}, {"name": ""}, {"name": "x", "permission": ["runs.read"]}],
        ids=["uppercase", "empty", "unknown-field"],
    )
    async def test_malformed_role_is_422(
        self, client: httpx.AsyncClient, body: dict[str, object]
    ) -> None:
        error_of(await client.post("/v1/roles", json=body), 422)


class TestUsers:
    async def test_create_read_list_change_and_delete(
        self, client: httpx.AsyncClient, callers: Callers, no_password_in_answers: list[str]
    ) -> None:
        await callers.account("accounts.manage", name="admins")
        response = await client.post(
            "/v1/users",
            json={"email": "Alice@Example.com", "password": PASSWORD, "roles": ["admins"]},
        )
        assert response.status_code == 201, response.text
        alice = response.json()
        assert alice["email"] == "alice@example.com"
        assert alice["roles"] == ["admins"] and alice["disabled"] is False
        assert set(alice) == {"email", "disabled", "roles", "created_at", "password_changed_at"}

        assert (await client.get("/v1/users/ALICE@example.com")).json() == alice
        emails = [user["email"] for user in (await client.get("/v1/users")).json()]
        assert emails == ["alice@example.com", OWNER_EMAIL]

        response = await client.patch(
            "/v1/users/alice@example.com", json={"roles": [], "disabled": True}
        )
        assert response.status_code == 200, response.text
        assert response.json()["roles"] == [] and response.json()["disabled"] is True
        response = await client.patch(
            "/v1/users/alice@example.com", json={"password": PASSWORD + "-new"}
        )
        assert response.status_code == 200, response.text
        assert response.json()["password_changed_at"] > alice["password_changed_at"]

        assert (await client.delete("/v1/users/alice@example.com")).status_code == 204
        error_of(await client.get("/v1/users/alice@example.com"), 404)
        assert len(no_password_in_answers) >= 7

    async def test_a_new_user_logs_in_and_acts_with_its_roles(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient, callers: Callers
    ) -> None:
        await callers.account("runs.read", name="auditors")
        body = {"email": "audit@example.com", "password": PASSWORD, "roles": ["auditors"]}
        assert (await client.post("/v1/users", json=body)).status_code == 201

        response = await anonymous_client.post(
            "/auth/token", data={"username": "AUDIT@example.com", "password": PASSWORD}
        )
        assert response.status_code == 200, response.text
        assert PASSWORD not in response.text
        auditor = callers.client(response.json()["access_token"])
        assert (await auditor.get("/v1/runs")).status_code == 200
        assert (await auditor.get("/v1/users")).status_code == 403

    async def test_duplicate_email_is_409_whatever_the_case(
        self, client: httpx.AsyncClient, app: FastAPI, owner_password_hash: str
    ) -> None:
        await add_user(app, "bob@example.com", owner_password_hash)
        body = {"email": "BOB@Example.COM", "password": PASSWORD}
        error = error_of(await client.post("/v1/users", json=body), 409)
        assert "bob@example.com" in error["message"]
        body = {"email": OWNER_EMAIL.upper(), "password": PASSWORD}
        error_of(await client.post("/v1/users", json=body), 409)

    @pytest.mark.parametrize(
        "body",
        [
            {"email": "short@example.com", "password": "too-short"},
            {"email": "not-an-email", "password": PASSWORD},
            {"email": "two@at@example.com", "password": PASSWORD},
            {"email": "x@example.com"},
            {"email": "x@example.com", "password": PASSWORD, "is_owner": True},
        ],
        ids=["short-password", "no-at", "two-ats", "no-password", "unknown-field"],
    )
    async def test_bad_user_is_422(
        self, client: httpx.AsyncClient, body: dict[str, object]
    ) -> None:
        response = await client.post("/v1/users", json=body)
        error = error_of(response, 422)
        assert PASSWORD not in response.text
        assert error["type"] == "validation_error"

    async def test_a_short_new_password_is_422(
        self, client: httpx.AsyncClient, app: FastAPI, owner_password_hash: str
    ) -> None:
        await add_user(app, "carol@example.com", owner_password_hash)
        response = await client.patch("/v1/users/carol@example.com", json={"password": "short"})
        error = error_of(response, 422)
        assert error["errors"][0]["path"] == "password"
        assert "12" in error["message"]

    async def test_an_unknown_role_is_404_and_nothing_is_created(
        self, client: httpx.AsyncClient
    ) -> None:
        body = {"email": "dave@example.com", "password": PASSWORD, "roles": ["nope"]}
        error = error_of(await client.post("/v1/users", json=body), 404)
        assert "nope" in error["message"]
        error_of(await client.get("/v1/users/dave@example.com"), 404)

    async def test_an_unknown_user_is_404(self, client: httpx.AsyncClient) -> None:
        error_of(await client.get("/v1/users/nobody@example.com"), 404)
        error_of(await client.patch("/v1/users/nobody@example.com", json={"disabled": True}), 404)
        error_of(await client.delete("/v1/users/nobody@example.com"), 404)

    async def test_disabling_a_user_works_even_without_an_enabled_owner(
        self, app: FastAPI, owner_password_hash: str
    ) -> None:
        # The last-owner rule guards owners only; with no enabled owner (an operator disabled
        # it in the database) other users must still be manageable.
        await add_user(app, "erin@example.com", owner_password_hash)
        async with app.state.session_factory() as session, session.begin():
            await session.execute(update(User).values(disabled=True))
            store = AccountStore(session)
            erin = await store.user("erin@example.com")
            await store.update_user(erin, UserUpdate(disabled=False), SYSTEM)
            await store.update_user(erin, UserUpdate(disabled=True), SYSTEM)
            await store.delete_user(erin, SYSTEM)

    async def test_concurrent_change_and_delete_never_answer_500(
        self,
        client: httpx.AsyncClient,
        app: FastAPI,
        owner_password_hash: str,
    ) -> None:
        # A change that loaded the user before a concurrent delete removed it used to fail its
        # flush (StaleDataError, a foreign key): 500s in 9 of 25 pairs.
        emails = [f"pair-{index}@example.com" for index in range(25)]
        for email in emails:
            await add_user(app, email, owner_password_hash)
        calls = []
        for email in emails:
            calls += [
                client.patch(f"/v1/users/{email}", json={"roles": [], "disabled": True}),
                client.delete(f"/v1/users/{email}"),
            ]
        answers = await asyncio.gather(*calls)

        statuses = Counter(answer.status_code for answer in answers)
        assert set(statuses) <= {200, 204, 404, 409}, statuses
        for answer in answers:
            if answer.status_code >= 400:
                assert answer.json()["error"]["type"] in ("not_found", "conflict"), answer.text
        assert statuses[204] == len(emails)  # every delete went through, whatever ran first
        for email in emails:
            error_of(await client.get(f"/v1/users/{email}"), 404)


class TestServiceAccounts:
    async def test_create_read_list_change_and_delete(
        self, client: httpx.AsyncClient, callers: Callers
    ) -> None:
        await callers.account("runs.read", name="auditors")
        body = {"name": "ci-deployer", "description": "CI", "roles": ["auditors"]}
        response = await client.post("/v1/service-accounts", json=body)
        assert response.status_code == 201, response.text
        created = response.json()
        assert {k: created[k] for k in body} == body

        assert (await client.get("/v1/service-accounts/ci-deployer")).json() == created
        names = [a["name"] for a in (await client.get("/v1/service-accounts")).json()]
        assert names == ["auditors", "ci-deployer"]

        response = await client.patch(
            "/v1/service-accounts/ci-deployer", json={"description": "the CI", "roles": []}
        )
        assert response.status_code == 200, response.text
        assert response.json()["description"] == "the CI" and response.json()["roles"] == []

        assert (await client.delete("/v1/service-accounts/ci-deployer")).status_code == 204
        error_of(await client.get("/v1/service-accounts/ci-deployer"), 404)

    async def test_duplicate_name_is_409(self, client: httpx.AsyncClient) -> None:
        assert (await client.post("/v1/service-accounts", json={"name": "bot"})).status_code == 201
        error_of(await client.post("/v1/service-accounts", json={"name": "bot"}), 409)

    async def test_an_unknown_role_is_404_and_nothing_is_created(
        self, client: httpx.AsyncClient
    ) -> None:
        body = {"name": "bot", "roles": ["nope"]}
        error = error_of(await client.post("/v1/service-accounts", json=body), 404)
        assert "nope" in error["message"]
        error_of(await client.get("/v1/service-accounts/bot"), 404)

    @pytest.mark.parametrize("name", ["Bot", "-bot", "bot/x", "b" * 65])
    async def test_a_bad_name_is_422(self, client: httpx.AsyncClient, name: str) -> None:
        error_of(await client.post("/v1/service-accounts", json={"name": name}), 422)

    async def test_deleting_an_account_ends_its_keys(
        self, client: httpx.AsyncClient, callers: Callers
    ) -> None:
        bot = await callers.holding("runs.read", name="bot")
        assert (await bot.get("/v1/runs")).status_code == 200
        assert (await client.delete("/v1/service-accounts/bot")).status_code == 204
        response = await bot.get("/v1/runs")
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"


class TestApiKeys:
    async def test_a_key_is_shown_once_and_listed_without_material(
        self, client: httpx.AsyncClient, callers: Callers
    ) -> None:
        await callers.account("runs.read", name="bot")
        response = await client.post("/v1/service-accounts/bot/api-keys", json={"name": "ci"})
        assert response.status_code == 201, response.text
        created = response.json()
        key = created["key"]
        assert created["name"] == "ci" and created["expires_at"] is None
        assert key.startswith("tfk_") and len(key) >= 4 + 16 + 1 + 43

        response = await client.get("/v1/service-accounts/bot/api-keys")
        assert response.status_code == 200, response.text
        (listed,) = response.json()
        assert set(listed) == {"name", "key_id", "expires_at", "last_used_at", "created_at"}
        assert listed["name"] == "ci" and listed["last_used_at"] is None
        secret_part = key.split("_", 2)[2]
        assert secret_part not in response.text

        assert (await callers.client(key).get("/v1/runs")).status_code == 200
        (listed,) = (await client.get("/v1/service-accounts/bot/api-keys")).json()
        assert listed["last_used_at"] is not None

    async def test_a_key_with_an_expiry(self, client: httpx.AsyncClient, callers: Callers) -> None:
        await callers.account("runs.read", name="bot")
        expires_at = (utcnow() + timedelta(days=30)).isoformat()
        response = await client.post(
            "/v1/service-accounts/bot/api-keys", json={"name": "ci", "expires_at": expires_at}
        )
        assert response.status_code == 201, response.text
        assert response.json()["expires_at"] is not None

        past = (utcnow() - timedelta(minutes=1)).isoformat()
        response = await client.post(
            "/v1/service-accounts/bot/api-keys", json={"name": "old", "expires_at": past}
        )
        assert "future" in error_of(response, 422)["message"]

        # A far moment whose offset pushes it past year 9999 in UTC overflowed (a 500).
        response = await client.post(
            "/v1/service-accounts/bot/api-keys",
            json={"name": "far", "expires_at": "9999-12-31T23:59:59-23:59"},
        )
        assert error_of(response, 422)["errors"][0]["path"] == "expires_at"

    async def test_duplicate_key_name_is_409(
        self, client: httpx.AsyncClient, callers: Callers
    ) -> None:
        await callers.account(name="bot")
        assert (await callers.key("bot", "ci")).startswith("tfk_")
        response = await client.post("/v1/service-accounts/bot/api-keys", json={"name": "ci"})
        error_of(response, 409)

    async def test_a_revoked_key_stops_working_at_once(
        self, client: httpx.AsyncClient, callers: Callers
    ) -> None:
        await callers.account("runs.read", name="bot")
        bot = callers.client(await callers.key("bot", "ci"))
        assert (await bot.get("/v1/runs")).status_code == 200

        response = await client.delete("/v1/service-accounts/bot/api-keys/ci")
        assert response.status_code == 204 and response.content == b""

        assert (await bot.get("/v1/runs")).status_code == 401
        assert (await client.get("/v1/service-accounts/bot/api-keys")).json() == []
        error_of(await client.delete("/v1/service-accounts/bot/api-keys/ci"), 404)

    async def test_keys_of_an_unknown_account_are_404(self, client: httpx.AsyncClient) -> None:
        error_of(await client.get("/v1/service-accounts/nope/api-keys"), 404)
        response = await client.post("/v1/service-accounts/nope/api-keys", json={"name": "ci"})
        error_of(response, 404)
        error_of(await client.delete("/v1/service-accounts/nope/api-keys/ci"), 404)
