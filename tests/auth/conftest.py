"""Fixtures of the identity tests: callers holding exactly the permissions a test names."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlmodel import col

from app.auth.models import Role, User, UserRole


@dataclass
class Callers:
    """Makes service accounts with one role of given permissions, and clients using their keys.

    Service accounts with API keys instead of users: a key costs a SHA-256, a user an argon2 hash.
    """

    app: FastAPI
    owner: httpx.AsyncClient
    opened: list[httpx.AsyncClient] = field(default_factory=list)
    made: int = 0

    async def account(self, *permissions: str, name: str | None = None) -> str:
        """A new service account whose one role holds exactly `permissions`; answers its name."""
        self.made += 1
        name = name or f"caller-{self.made}"
        role = {"name": name, "permissions": list(permissions)}
        response = await self.owner.post("/v1/roles", json=role)
        assert response.status_code == 201, response.text
        account = {"name": name, "roles": [name]}
        response = await self.owner.post("/v1/service-accounts", json=account)
        assert response.status_code == 201, response.text
        return name

    async def key(self, account: str, key_name: str = "test") -> str:
        """A new API key of a service account, made by the owner."""
        response = await self.owner.post(
            f"/v1/service-accounts/{account}/api-keys", json={"name": key_name}
        )
        assert response.status_code == 201, response.text
        key: str = response.json()["key"]
        return key

    def client(self, credential: str) -> httpx.AsyncClient:
        """A client of the app sending `credential` as its bearer token."""
        http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://tokenfarm.test",
            headers={"Authorization": f"Bearer {credential}"},
        )
        self.opened.append(http)
        return http

    async def holding(self, *permissions: str, name: str | None = None) -> httpx.AsyncClient:
        """A client of a new service account that holds exactly `permissions`."""
        return self.client(await self.key(await self.account(*permissions, name=name)))


@pytest.fixture
async def callers(app: FastAPI, client: httpx.AsyncClient) -> AsyncIterator[Callers]:
    """A maker of callers with chosen permissions (the owner creates them)."""
    maker = Callers(app=app, owner=client)
    yield maker
    for http in maker.opened:
        await http.aclose()


async def add_user(
    app: FastAPI, email: str, password_hash: str, roles: tuple[str, ...] = ()
) -> None:
    """Insert a user with an already computed hash (an argon2 hash per test would be slow)."""
    async with app.state.session_factory() as session, session.begin():
        user = User(email=email, password_hash=password_hash)
        session.add(user)
        await session.flush()
        assert user.id is not None
        for name in roles:
            role = (await session.execute(select(Role).where(col(Role.name) == name))).scalar_one()
            assert role.id is not None
            session.add(UserRole(user_id=user.id, role_id=role.id))


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """The `error` object of a response that must have `status`."""
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["message"], response.text
    return error


def assert_refused(response: httpx.Response, permission: str) -> None:
    """A 403 that names the missing permission in its message and its `permission` field."""
    error = error_of(response, 403)
    assert error["type"] == "permission_denied", error
    assert permission in error["message"], error
    assert error["permission"] == permission, error
