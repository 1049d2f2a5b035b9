"""Console sessions without a visitor (httpx against the app, SQLite and PostgreSQL): the cookie,
what is stored, timeouts on a manual clock, what ends a session, CSRF on logout, and that the
cookie and the API's credentials never stand in for each other."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from app.clock import ManualClock
from app.config import Settings
from app.console.models import ConsoleSession
from app.console.sessions import COOKIE_NAME, cookie_is_secure
from app.main import create_app
from tests.conftest import OWNER_EMAIL, OWNER_PASSWORD, owner_token

IDLE = 600
MAX = 3600
CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 12, 2, 9, 0, tzinfo=UTC))


@pytest.fixture
async def console_app(settings: Settings, clock: ManualClock) -> AsyncIterator[FastAPI]:
    """The app on a manual clock, with short session timeouts."""
    settings = settings.model_copy(
        update={"console_session_idle_seconds": IDLE, "console_session_max_seconds": MAX}
    )
    application = create_app(settings, clock=clock)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def api(console_app: FastAPI, owner_password_hash: str) -> AsyncIterator[httpx.AsyncClient]:
    """The API, as the owner (login token)."""
    token = await owner_token(console_app, owner_password_hash)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=console_app),
        base_url="http://tokenfarm.test",
        headers={"Authorization": f"Bearer {token}"},
    ) as http:
        yield http


@pytest.fixture
async def visitor(console_app: FastAPI, api: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    """A cookie-keeping client (a browser without the rendering); the owner exists."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=console_app), base_url="http://tokenfarm.test"
    ) as http:
        yield http


async def log_in(http: httpx.AsyncClient, password: str = OWNER_PASSWORD) -> httpx.Response:
    return await http.post("/console/login", data={"email": OWNER_EMAIL, "password": password})


async def is_logged_in(http: httpx.AsyncClient) -> bool:
    response = await http.get("/console/secrets")
    if response.status_code == 303:
        assert response.headers["location"] == "/console/login"
        return False
    assert response.status_code == 200, response.text
    return True


async def csrf_token(http: httpx.AsyncClient) -> str:
    match = CSRF.search((await http.get("/console/secrets")).text)
    assert match, "the page carries no CSRF token"
    return match.group(1)


async def sessions(app: FastAPI) -> list[ConsoleSession]:
    async with app.state.session_factory() as session:
        return list((await session.execute(select(ConsoleSession))).scalars())


class TestLogin:
    async def test_login_sets_a_guarded_cookie_and_stores_only_its_hash(
        self, visitor: httpx.AsyncClient, console_app: FastAPI
    ) -> None:
        response = await log_in(visitor)
        assert response.status_code == 303
        assert response.headers["location"] == "/console/secrets"
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE_NAME}=")
        for flag in ("HttpOnly", "SameSite=lax", "Path=/", f"Max-Age={MAX}"):
            assert flag.lower() in cookie.lower()
        assert "secure" not in cookie.lower()  # plain http here
        raw = visitor.cookies[COOKIE_NAME]
        [row] = await sessions(console_app)
        assert row.id_hash == hashlib.sha256(raw.encode()).hexdigest()
        assert raw not in repr(row.model_dump())
        assert await is_logged_in(visitor)

    def test_cookie_is_secure_behind_an_https_public_url(self, settings: Settings) -> None:
        for public_url, secure in (
            ("https://tokens.example.com", True),
            ("http://127.0.0.1:8000", False),
            (None, False),
        ):
            with_url = settings.model_copy(update={"public_url": public_url})
            assert cookie_is_secure(with_url) is secure

    async def test_wrong_password_is_401_and_starts_nothing(
        self, visitor: httpx.AsyncClient, console_app: FastAPI
    ) -> None:
        response = await log_in(visitor, "not-the-password")
        assert response.status_code == 401
        assert "Wrong email or password" in response.text
        assert COOKIE_NAME not in response.headers.get("set-cookie", "")
        assert await sessions(console_app) == []

    async def test_missing_fields_say_what_to_enter(self, visitor: httpx.AsyncClient) -> None:
        response = await visitor.post("/console/login", data={"email": OWNER_EMAIL})
        assert response.status_code == 400
        assert "Enter your email and your password." in response.text

    async def test_throttled_login_is_429_with_the_wait(self, visitor: httpx.AsyncClient) -> None:
        statuses = [(await log_in(visitor, "wrong")).status_code for _ in range(6)]
        assert statuses == [401] * 5 + [429]
        throttled = await log_in(visitor, OWNER_PASSWORD)  # even the right password waits
        assert throttled.status_code == 429
        wait = int(throttled.headers["retry-after"])
        assert f"Wait {wait} seconds, then try again." in throttled.text

    async def test_front_door_and_pages_send_strangers_to_login(
        self, visitor: httpx.AsyncClient
    ) -> None:
        home = await visitor.get("/")
        assert home.status_code == 307
        assert home.headers["location"] == "/console/secrets"
        assert not await is_logged_in(visitor)


class TestEndOfSession:
    async def test_idle_session_ends(
        self, visitor: httpx.AsyncClient, console_app: FastAPI, clock: ManualClock
    ) -> None:
        await log_in(visitor)
        await clock.advance(IDLE - 1)
        assert await is_logged_in(visitor)
        await clock.advance(IDLE)
        assert not await is_logged_in(visitor)
        assert await sessions(console_app) == []

    async def test_busy_session_ends_at_its_absolute_limit(
        self, visitor: httpx.AsyncClient, clock: ManualClock
    ) -> None:
        await log_in(visitor)
        for _ in range(MAX // (IDLE // 2) - 1):
            await clock.advance(IDLE // 2)
            assert await is_logged_in(visitor)
        await clock.advance(IDLE // 2)
        assert not await is_logged_in(visitor)

    async def test_password_change_ends_console_sessions(
        self, visitor: httpx.AsyncClient, api: httpx.AsyncClient
    ) -> None:
        await log_in(visitor)
        changed = await api.patch(
            f"/v1/users/{OWNER_EMAIL}", json={"password": "a-new-password-9f8e7d"}
        )
        assert changed.status_code == 200, changed.text
        assert not await is_logged_in(visitor)

    async def test_log_out_everywhere_ends_console_sessions(
        self, visitor: httpx.AsyncClient, api: httpx.AsyncClient
    ) -> None:
        await log_in(visitor)
        ended = await api.delete(f"/v1/users/{OWNER_EMAIL}/sessions")
        assert ended.status_code == 204, ended.text
        assert not await is_logged_in(visitor)

    async def test_logout_needs_the_csrf_token(
        self, visitor: httpx.AsyncClient, console_app: FastAPI
    ) -> None:
        await log_in(visitor)
        for form in ({}, {"csrf_token": "f" * 64}):
            refused = await visitor.post("/console/logout", data=form)
            assert refused.status_code == 403
            assert "nothing was changed" in refused.text
            assert await is_logged_in(visitor)
        token = await csrf_token(visitor)
        done = await visitor.post("/console/logout", data={"csrf_token": token})
        assert done.status_code == 303
        assert done.headers["location"] == "/console/login"
        assert await sessions(console_app) == []
        assert not await is_logged_in(visitor)

    async def test_a_csrf_token_belongs_to_its_session(self, visitor: httpx.AsyncClient) -> None:
        await log_in(visitor)
        first = await csrf_token(visitor)
        await log_in(visitor)
        assert await csrf_token(visitor) != first
        refused = await visitor.post("/console/logout", data={"csrf_token": first})
        assert refused.status_code == 403


class TestCredentialsStayApart:
    async def test_the_session_cookie_does_not_authorize_the_api(
        self, visitor: httpx.AsyncClient
    ) -> None:
        await log_in(visitor)
        response = await visitor.get("/v1/secrets")
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "not_authenticated"

    async def test_an_api_credential_does_not_open_the_console(
        self, visitor: httpx.AsyncClient, api: httpx.AsyncClient
    ) -> None:
        created = await api.post("/v1/service-accounts", json={"name": "ci", "roles": ["owner"]})
        assert created.status_code == 201, created.text
        key = await api.post("/v1/service-accounts/ci/api-keys", json={"name": "k"})
        assert key.status_code == 201, key.text
        for credential in (key.json()["key"], api.headers["authorization"].split()[1]):
            headers = {"Authorization": f"Bearer {credential}"}
            page = await visitor.get("/console/secrets", headers=headers)
            assert page.status_code == 303
            assert page.headers["location"] == "/console/login"
        as_password = await visitor.post(
            "/console/login", data={"email": OWNER_EMAIL, "password": key.json()["key"]}
        )
        assert as_password.status_code == 401


class TestPages:
    async def test_pages_carry_a_strict_csp(self, visitor: httpx.AsyncClient) -> None:
        page = await visitor.get("/console/login")
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp
        assert "script-src 'self';" in csp
        assert "frame-ancestors 'none'" in csp
        assert page.headers["cache-control"] == "no-store"

    async def test_no_value_is_in_the_secrets_page(
        self, visitor: httpx.AsyncClient, api: httpx.AsyncClient
    ) -> None:
        canary: dict[str, Any] = {"name": "CANARY", "value": "canary-value-3e1d0c"}
        assert (await api.post("/v1/secrets", json=canary)).status_code == 201
        await log_in(visitor)
        page = await visitor.get("/console/secrets")
        assert 'data-secret="CANARY"' in page.text
        assert "canary-value-3e1d0c" not in page.text
