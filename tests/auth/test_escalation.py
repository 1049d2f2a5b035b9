"""No escalation: a caller grants only what it holds, and never edits a stronger account or role."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.db import utcnow
from tests.auth.conftest import Callers, add_user, assert_refused, error_of
from tests.conftest import OWNER_EMAIL

OWNER_PATH = f"/v1/users/{OWNER_EMAIL}"
# (method, path, JSON body) of one request
Call = tuple[str, str, dict[str, Any] | None]


@pytest.fixture
async def admin(callers: Callers) -> httpx.AsyncClient:
    """A service account that holds `accounts.manage` and nothing else."""
    return await callers.holding("accounts.manage", name="admin")


@pytest.fixture
async def stronger(client: httpx.AsyncClient, callers: Callers) -> None:
    """A role `ops` stronger than the admin, a service account `ops-bot` holding it (with a key
    `ops-key`), a service account `root-bot` holding `owner`, and a user `ops@example.com`."""
    response = await client.post(
        "/v1/roles", json={"name": "ops", "permissions": ["accounts.manage", "secrets.manage"]}
    )
    assert response.status_code == 201, response.text
    for name, role in (("ops-bot", "ops"), ("root-bot", "owner")):
        response = await client.post("/v1/service-accounts", json={"name": name, "roles": [role]})
        assert response.status_code == 201, response.text
    await callers.key("ops-bot", "ops-key")


async def roles_of(owner: httpx.AsyncClient, path: str) -> list[str]:
    """The roles an account holds, as the owner sees them."""
    response = await owner.get(path)
    assert response.status_code == 200, response.text
    roles: list[str] = response.json()["roles"]
    return roles


class TestGrantOnlyWhatYouHold:
    @pytest.mark.parametrize(
        ("permissions", "missing"),
        [
            (["*"], "*"),
            (["secrets.manage"], "secrets.manage"),
            (["accounts.*"], "accounts.*"),
            (["accounts.manage", "secrets.read:ACCESS_TOKEN"], "secrets.read:ACCESS_TOKEN"),
        ],
    )
    async def test_a_role_can_hold_only_what_its_creator_holds(
        self,
        client: httpx.AsyncClient,
        admin: httpx.AsyncClient,
        permissions: list[str],
        missing: str,
    ) -> None:
        response = await admin.post("/v1/roles", json={"name": "mine", "permissions": permissions})
        assert_refused(response, missing)
        assert (await client.get("/v1/roles/mine")).status_code == 404

        response = await client.post("/v1/roles", json={"name": "mine", "permissions": permissions})
        assert response.status_code == 201, response.text

    async def test_a_role_with_what_the_creator_holds_is_fine(
        self, admin: httpx.AsyncClient
    ) -> None:
        response = await admin.post(
            "/v1/roles", json={"name": "helper", "permissions": ["accounts.manage"]}
        )
        assert response.status_code == 201, response.text

    async def test_a_prefix_covers_what_it_prefixes(self, callers: Callers) -> None:
        holder = await callers.holding("accounts.manage", "secrets.*")
        response = await holder.post(
            "/v1/roles",
            json={"name": "reader", "permissions": ["secrets.read:*", "secrets.manage"]},
        )
        assert response.status_code == 201, response.text
        assert_refused(
            await holder.post("/v1/roles", json={"name": "all", "permissions": ["*"]}), "*"
        )


class TestOwnerRoleStaysOutOfReach:
    async def test_accounts_manage_cannot_hand_out_the_owner_role(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        admin: httpx.AsyncClient,
        owner_password_hash: str,
    ) -> None:
        await add_user(app, "weak@example.com", owner_password_hash)
        response = await client.post("/v1/service-accounts", json={"name": "weak-bot"})
        assert response.status_code == 201, response.text
        owner_roles = {"roles": ["owner"]}
        attempts: list[Call] = [
            (
                "POST",
                "/v1/users",
                {"email": "new@example.com", "password": "long-enough-pass", **owner_roles},
            ),
            ("PATCH", "/v1/users/weak@example.com", owner_roles),
            ("POST", "/v1/service-accounts", {"name": "new-bot", **owner_roles}),
            ("PATCH", "/v1/service-accounts/weak-bot", owner_roles),
        ]
        for method, path, body in attempts:
            assert_refused(await admin.request(method, path, json=body), "*")

        assert (await client.get("/v1/users/new@example.com")).status_code == 404
        assert (await client.get("/v1/service-accounts/new-bot")).status_code == 404
        assert await roles_of(client, "/v1/users/weak@example.com") == []
        assert await roles_of(client, "/v1/service-accounts/weak-bot") == []

    async def test_the_owner_can_hand_out_the_owner_role(
        self, app: FastAPI, client: httpx.AsyncClient, owner_password_hash: str
    ) -> None:
        await add_user(app, "weak@example.com", owner_password_hash)
        response = await client.patch("/v1/users/weak@example.com", json={"roles": ["owner"]})
        assert response.status_code == 200, response.text
        response = await client.post(
            "/v1/service-accounts", json={"name": "root-bot", "roles": ["owner"]}
        )
        assert response.status_code == 201, response.text
        assert response.json()["roles"] == ["owner"]

    @pytest.mark.parametrize("role", ["owner", "ops"])
    async def test_a_service_account_cannot_raise_itself(
        self,
        client: httpx.AsyncClient,
        admin: httpx.AsyncClient,
        stronger: None,
        role: str,
    ) -> None:
        response = await admin.patch("/v1/service-accounts/admin", json={"roles": ["admin", role]})

        assert_refused(response, "*" if role == "owner" else "secrets.manage")
        assert await roles_of(client, "/v1/service-accounts/admin") == ["admin"]
        assert_refused(await admin.get("/v1/secrets"), "secrets.manage")

    async def test_a_caller_cannot_widen_its_own_role(
        self, client: httpx.AsyncClient, admin: httpx.AsyncClient
    ) -> None:
        response = await admin.patch(
            "/v1/roles/admin", json={"permissions": ["accounts.manage", "secrets.manage"]}
        )
        assert_refused(response, "secrets.manage")
        role = (await client.get("/v1/roles/admin")).json()
        assert role["permissions"] == ["accounts.manage"]

    async def test_a_user_cannot_raise_itself(
        self, app: FastAPI, client: httpx.AsyncClient, callers: Callers, owner_password_hash: str
    ) -> None:
        await callers.account("accounts.manage", name="user-admin")
        await add_user(app, "admin@example.com", owner_password_hash, roles=("user-admin",))
        admin = callers.client(app.state.tokens.issue("admin@example.com", 0, utcnow()))

        response = await admin.patch("/v1/users/admin@example.com", json={"roles": ["owner"]})

        assert_refused(response, "*")
        assert await roles_of(client, "/v1/users/admin@example.com") == ["user-admin"]


class TestStrongerPeers:
    async def test_a_role_the_caller_does_not_fully_hold_is_out_of_reach(
        self, client: httpx.AsyncClient, admin: httpx.AsyncClient, stronger: None
    ) -> None:
        attempts: list[Call] = [
            ("PATCH", "/v1/roles/ops", {"permissions": ["accounts.manage"]}),
            ("PATCH", "/v1/roles/ops", {"description": "mine now"}),
            ("PATCH", "/v1/roles/owner", {"description": "mine now"}),
            ("DELETE", "/v1/roles/ops", None),
        ]
        for method, path, body in attempts:
            response = await admin.request(method, path, json=body)
            assert response.status_code == 403, response.text
            assert response.json()["error"]["permission"] in {"secrets.manage", "*"}
        role = (await client.get("/v1/roles/ops")).json()
        assert role["permissions"] == ["accounts.manage", "secrets.manage"]
        assert role["description"] == ""
        assert (await client.get("/v1/roles/owner")).json()["description"] != "mine now"

    async def test_no_key_for_a_stronger_service_account(
        self, client: httpx.AsyncClient, admin: httpx.AsyncClient, stronger: None
    ) -> None:
        for account, missing in (("ops-bot", "secrets.manage"), ("root-bot", "*")):
            response = await admin.post(
                f"/v1/service-accounts/{account}/api-keys", json={"name": "stolen"}
            )
            assert_refused(response, missing)
            keys = (await client.get(f"/v1/service-accounts/{account}/api-keys")).json()
            assert "stolen" not in [key["name"] for key in keys]

    async def test_a_stronger_service_account_cannot_be_changed_deleted_or_cut_off(
        self, client: httpx.AsyncClient, admin: httpx.AsyncClient, stronger: None
    ) -> None:
        attempts: list[Call] = [
            ("PATCH", "/v1/service-accounts/ops-bot", {"roles": []}),
            ("PATCH", "/v1/service-accounts/ops-bot", {"description": "mine"}),
            ("DELETE", "/v1/service-accounts/ops-bot", None),
            ("DELETE", "/v1/service-accounts/ops-bot/api-keys/ops-key", None),
        ]
        for method, path, body in attempts:
            assert_refused(await admin.request(method, path, json=body), "secrets.manage")
        assert await roles_of(client, "/v1/service-accounts/ops-bot") == ["ops"]
        keys = (await client.get("/v1/service-accounts/ops-bot/api-keys")).json()
        assert [key["name"] for key in keys] == ["ops-key"]

    async def test_a_stronger_user_cannot_be_taken_over_disabled_or_deleted(
        self, client: httpx.AsyncClient, admin: httpx.AsyncClient
    ) -> None:
        attempts: list[Call] = [
            ("PATCH", OWNER_PATH, {"password": "taken-over-password"}),
            ("PATCH", OWNER_PATH, {"disabled": True}),
            ("PATCH", OWNER_PATH, {"roles": []}),
            ("DELETE", OWNER_PATH, None),
        ]
        for method, path, body in attempts:
            assert_refused(await admin.request(method, path, json=body), "*")
        owner = (await client.get(OWNER_PATH)).json()
        assert owner["disabled"] is False
        assert owner["roles"] == ["owner"]

    async def test_the_owner_can_do_all_of_it(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        stronger: None,
        owner_password_hash: str,
    ) -> None:
        await add_user(app, "ops@example.com", owner_password_hash, roles=("ops",))
        steps: list[Call] = [
            ("PATCH", "/v1/roles/ops", {"description": "on call"}),
            ("PATCH", "/v1/roles/owner", {"description": "runs the place"}),
            ("POST", "/v1/service-accounts/root-bot/api-keys", {"name": "ci"}),
            ("DELETE", "/v1/service-accounts/ops-bot/api-keys/ops-key", None),
            ("PATCH", "/v1/service-accounts/ops-bot", {"roles": []}),
            ("DELETE", "/v1/service-accounts/ops-bot", None),
            ("PATCH", "/v1/users/ops@example.com", {"disabled": True}),
            ("DELETE", "/v1/users/ops@example.com", None),
            ("DELETE", "/v1/roles/ops", None),
        ]
        for method, path, body in steps:
            response = await client.request(method, path, json=body)
            assert 200 <= response.status_code < 300, response.text


class TestLastOwner:
    @pytest.mark.parametrize(
        ("method", "body"),
        [("DELETE", None), ("PATCH", {"disabled": True}), ("PATCH", {"roles": []})],
        ids=["delete", "disable", "demote"],
    )
    async def test_the_last_enabled_owner_stays(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        owner_password_hash: str,
        method: str,
        body: dict[str, object] | None,
    ) -> None:
        # A disabled owner is no owner: it doesn't make the last enabled one removable.
        await add_user(app, "retired@example.com", owner_password_hash, roles=("owner",))
        response = await client.patch("/v1/users/retired@example.com", json={"disabled": True})
        assert response.status_code == 200, response.text

        error = error_of(await client.request(method, OWNER_PATH, json=body), 409)
        assert "owner" in error["message"]
        owner = (await client.get(OWNER_PATH)).json()
        assert owner["roles"] == ["owner"] and owner["disabled"] is False

        response = await client.patch("/v1/users/retired@example.com", json={"disabled": False})
        assert response.status_code == 200, response.text
        response = await client.request(method, OWNER_PATH, json=body)
        assert 200 <= response.status_code < 300, response.text

    async def test_an_owner_service_account_does_not_count(
        self, client: httpx.AsyncClient, stronger: None
    ) -> None:
        # Only a person can log in to /docs and fix things; `root-bot` holds owner all the same.
        error_of(await client.delete(OWNER_PATH), 409)

    async def test_other_users_can_be_disabled_and_deleted(
        self, app: FastAPI, client: httpx.AsyncClient, owner_password_hash: str
    ) -> None:
        await add_user(app, "someone@example.com", owner_password_hash)
        response = await client.patch("/v1/users/someone@example.com", json={"disabled": True})
        assert response.status_code == 200, response.text
        assert (await client.delete("/v1/users/someone@example.com")).status_code == 204


class TestBuiltinRoles:
    @pytest.mark.parametrize("role", ["owner", "anonymous"])
    async def test_built_in_roles_cannot_be_deleted(
        self, client: httpx.AsyncClient, role: str
    ) -> None:
        error = error_of(await client.delete(f"/v1/roles/{role}"), 409)
        assert "built in" in error["message"]
        assert (await client.get(f"/v1/roles/{role}")).json()["builtin"] is True

    @pytest.mark.parametrize("permissions", [["secrets.manage"], [], ["*"]])
    async def test_the_owner_role_always_holds_everything(
        self, client: httpx.AsyncClient, permissions: list[str]
    ) -> None:
        response = await client.patch("/v1/roles/owner", json={"permissions": permissions})
        error_of(response, 409)
        assert (await client.get("/v1/roles/owner")).json()["permissions"] == ["*"]


class TestAnonymousRole:
    @pytest.mark.parametrize("permission", ["accounts.manage", "accounts.*", "a*", "*"])
    async def test_callers_without_a_credential_never_manage_accounts(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient, permission: str
    ) -> None:
        response = await client.patch("/v1/roles/anonymous", json={"permissions": [permission]})
        assert "anonymous" in error_of(response, 409)["message"]
        assert (await client.get("/v1/roles/anonymous")).json()["permissions"] == []
        assert (await anonymous_client.get("/v1/roles")).status_code == 401

    async def test_a_caller_opens_to_everyone_only_what_it_holds(
        self, callers: Callers, anonymous_client: httpx.AsyncClient
    ) -> None:
        admin = await callers.holding("accounts.manage", "runs.read")
        response = await admin.patch("/v1/roles/anonymous", json={"permissions": ["runs.read"]})
        assert response.status_code == 200, response.text
        assert (await anonymous_client.get("/v1/runs")).status_code == 200
        response = await admin.patch(
            "/v1/roles/anonymous", json={"permissions": ["secrets.read:*"]}
        )
        assert_refused(response, "secrets.read:*")
