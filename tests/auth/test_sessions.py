"""Ending login tokens: a password change, "log out everywhere", and an admin ending a user's.

Each moves the user's token generation on; every token issued before stops working at once (the
actor cache included), even one issued in the same second.
"""

from __future__ import annotations

from datetime import datetime

import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from tests.auth.conftest import Callers, add_user, assert_refused, error_of
from tests.auth.test_tokens import sign
from tests.conftest import OWNER_PASSWORD

USER = "dana@example.com"


async def log_in(http: httpx.AsyncClient, email: str = USER, password: str = OWNER_PASSWORD) -> str:
    """A login token through `POST /auth/token`."""
    response = await http.post("/auth/token", data={"username": email, "password": password})
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


async def status_with(http: httpx.AsyncClient, token: str) -> int:
    """The status of a call that any logged-in owner-role user may make, with `token`."""
    response = await http.get("/v1/users", headers={"Authorization": f"Bearer {token}"})
    return response.status_code


@pytest.fixture
async def user(app: FastAPI, client: httpx.AsyncClient, owner_password_hash: str) -> str:
    """A user holding the owner role, whose password is the owner's (its hash is precomputed)."""
    await add_user(app, USER, owner_password_hash, roles=("owner",))
    return USER


@pytest.mark.usefixtures("user")
class TestPasswordChange:
    async def test_a_token_issued_in_the_same_second_is_refused_after_the_change(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient, settings: Settings
    ) -> None:
        response = await client.patch(f"/v1/users/{USER}", json={"password": "another-password"})
        assert response.status_code == 200, response.text
        changed_at = datetime.fromisoformat(response.json()["password_changed_at"])
        # Issued before the change (generation 0), in the very second it happened: a login
        # racing the change. A real login can't be timed to land there on a loaded machine.
        same_second = int(changed_at.timestamp())
        before = sign(settings, sub=USER, iat=same_second, gen=0)
        assert await status_with(anonymous_client, before) == 401
        # The control: only the generation differs from a token issued after the change.
        after = sign(settings, sub=USER, iat=same_second, gen=1)
        assert await status_with(anonymous_client, after) == 200

    async def test_a_token_from_just_before_the_change_is_refused_after_it(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient
    ) -> None:
        token = await log_in(anonymous_client)
        # Used once, so the actor cache holds it too.
        assert await status_with(anonymous_client, token) == 200
        new_password = OWNER_PASSWORD + "-changed"
        response = await client.patch(f"/v1/users/{USER}", json={"password": new_password})
        assert response.status_code == 200, response.text

        assert await status_with(anonymous_client, token) == 401
        fresh = await log_in(anonymous_client, password=new_password)
        assert await status_with(anonymous_client, fresh) == 200

    async def test_other_changes_leave_tokens_alone(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient
    ) -> None:
        token = await log_in(anonymous_client)
        response = await client.patch(f"/v1/users/{USER}", json={"roles": ["owner"]})
        assert response.status_code == 200, response.text
        assert await status_with(anonymous_client, token) == 200


@pytest.mark.usefixtures("user")
class TestLogOutEverywhere:
    async def test_ends_every_token_of_the_caller_and_no_one_elses(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient
    ) -> None:
        laptop, phone = await log_in(anonymous_client), await log_in(anonymous_client)
        assert await status_with(anonymous_client, phone) == 200

        response = await anonymous_client.post(
            "/auth/logout-all", headers={"Authorization": f"Bearer {laptop}"}
        )
        assert response.status_code == 204, response.text

        assert await status_with(anonymous_client, laptop) == 401
        assert await status_with(anonymous_client, phone) == 401
        assert (await client.get("/v1/users")).status_code == 200  # the owner's token lives on
        again = await log_in(anonymous_client)
        assert await status_with(anonymous_client, again) == 200

    async def test_an_account_manager_ends_a_users_tokens(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient
    ) -> None:
        token = await log_in(anonymous_client)
        assert await status_with(anonymous_client, token) == 200
        response = await client.delete(f"/v1/users/{USER}/sessions")
        assert response.status_code == 204, response.text
        assert await status_with(anonymous_client, token) == 401

    async def test_a_weaker_account_manager_cannot_end_an_owners_tokens(
        self, anonymous_client: httpx.AsyncClient, callers: Callers
    ) -> None:
        token = await log_in(anonymous_client)
        manager = await callers.holding("accounts.manage")
        assert_refused(await manager.delete(f"/v1/users/{USER}/sessions"), "*")
        assert await status_with(anonymous_client, token) == 200

    async def test_an_unknown_user_is_404(self, client: httpx.AsyncClient) -> None:
        error_of(await client.delete("/v1/users/nobody@example.com/sessions"), 404)


class TestLogOutEverywhereNeedsAUser:
    async def test_without_a_credential_it_is_401(
        self, anonymous_client: httpx.AsyncClient
    ) -> None:
        response = await anonymous_client.post("/auth/logout-all")
        assert error_of(response, 401)["type"] == "not_authenticated"

    async def test_a_service_account_is_told_to_revoke_keys(self, callers: Callers) -> None:
        robot = await callers.holding("accounts.manage")
        error = error_of(await robot.post("/auth/logout-all"), 409)
        assert "api-keys" in error["message"]
