"""Login tokens: a valid JWT, every way to forge or break one, and where the key comes from."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from jose import jwt
from sqlalchemy import update
from sqlmodel import col

from app.auth.models import User
from app.auth.tokens import MAX_HEADER_LENGTH, MAX_TOKEN_LENGTH, TokenService, load_jwt_secret
from app.config import Settings
from app.db import utcnow
from app.errors import ConfigurationError, NotAuthenticated
from tests.conftest import OWNER_EMAIL

USER_EMAIL = "bob@example.com"
USER_PASSWORD = "bob-password-8c1e44"
PROTECTED = "/v1/secrets"
OMIT = object()


def b64(data: bytes) -> str:
    """Base64url without padding, as JWTs write it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims for the owner, issued 10 s ago; `name=OMIT` leaves a claim out."""
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": OWNER_EMAIL,
        "gen": 0,
        "iat": now - 10,
        "exp": now + 600,
        "aud": "tokenfarm-api",
        "iss": "tokenfarm",
    }
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not OMIT}


def hs256(header: dict[str, Any], payload: dict[str, Any], key: str) -> str:
    """A token with exactly this header, HMAC-SHA256-signed with `key`."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def sign(settings: Settings, **overrides: Any) -> str:
    """A token signed with the app's key through python-jose."""
    assert settings.jwt_secret
    return str(jwt.encode(claims(**overrides), settings.jwt_secret, algorithm="HS256"))


async def call(app_client: httpx.AsyncClient, token: str) -> httpx.Response:
    """The protected route with `token` as the only credential."""
    return await app_client.get(PROTECTED, headers={"Authorization": f"Bearer {token}"})


async def backdate_password(app: FastAPI, email: str) -> None:
    """Make a user's password an hour old, so tokens issued since then are current."""
    async with app.state.session_factory() as session, session.begin():
        await session.execute(
            update(User)
            .where(col(User.email) == email)
            .values(password_changed_at=utcnow() - timedelta(hours=1))
        )


@pytest.fixture
async def owner_since_an_hour(client: httpx.AsyncClient, app: FastAPI) -> None:
    """The owner exists (through `client`) with a password set an hour ago."""
    await backdate_password(app, OWNER_EMAIL)


def assert_not_authenticated(response: httpx.Response) -> None:
    """A 401 in the error shape with a bearer challenge."""
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["type"] == "not_authenticated"


def _alg_none(settings: Settings) -> str:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(claims()).encode())}."


def _other_key(settings: Settings) -> str:
    return str(jwt.encode(claims(), "another-key-" + "k" * 40, algorithm="HS256"))


def _tampered(settings: Settings) -> str:
    # A genuine signature of the owner's claims, sent with a different payload.
    header, _, signature = sign(settings, sub="nobody@example.com").split(".")
    payload = b64(json.dumps(claims()).encode())
    return f"{header}.{payload}.{signature}"


def _oversized_header(settings: Settings) -> str:
    assert settings.jwt_secret
    header = {"alg": "HS256", "typ": "JWT", "kid": "k" * MAX_HEADER_LENGTH}
    return hs256(header, claims(), settings.jwt_secret)


def _oversized_token(settings: Settings) -> str:
    return sign(settings, padding="p" * MAX_TOKEN_LENGTH)


def _rs256_header(settings: Settings) -> str:
    # Algorithm confusion: an RS256 header over an HMAC made with the app's own key.
    assert settings.jwt_secret
    return hs256({"alg": "RS256", "typ": "JWT"}, claims(), settings.jwt_secret)


def _hs512(settings: Settings) -> str:
    assert settings.jwt_secret
    return str(jwt.encode(claims(), settings.jwt_secret, algorithm="HS512"))


FORGED: dict[str, Callable[[Settings], str]] = {
    "alg_none": _alg_none,
    "signed_with_another_key": _other_key,
    "expired": lambda s: sign(s, iat=int(time.time()) - 700, exp=int(time.time()) - 100),
    "no_exp": lambda s: sign(s, exp=OMIT),
    "no_iat": lambda s: sign(s, iat=OMIT),
    "no_sub": lambda s: sign(s, sub=OMIT),
    "no_aud": lambda s: sign(s, aud=OMIT),
    "no_iss": lambda s: sign(s, iss=OMIT),
    "wrong_aud": lambda s: sign(s, aud="someone-else"),
    "wrong_iss": lambda s: sign(s, iss="someone-else"),
    "empty_sub": lambda s: sign(s, sub=""),
    "sub_not_a_string": lambda s: sign(s, sub=42),
    "iat_a_list": lambda s: sign(s, iat=[1]),
    "exp_a_list": lambda s: sign(s, exp=[1]),
    "iat_a_bool": lambda s: sign(s, iat=True),
    "iat_a_string": lambda s: sign(s, iat="yesterday"),
    "unknown_user": lambda s: sign(s, sub="nobody@example.com"),
    "no_gen": lambda s: sign(s, gen=OMIT),
    "gen_a_bool": lambda s: sign(s, gen=False),
    "gen_a_string": lambda s: sign(s, gen="0"),
    "gen_a_float": lambda s: sign(s, gen=0.0),
    "gen_of_another_time": lambda s: sign(s, gen=1),
    "tampered_payload": _tampered,
    "oversized_header": _oversized_header,
    "oversized_token": _oversized_token,
    "rs256_header": _rs256_header,
    "hs512": _hs512,
    "not_a_jwt": lambda s: "a.b.c",
    "two_segments": lambda s: ".".join(sign(s).split(".")[:2]),
}


class TestValidToken:
    @pytest.mark.usefixtures("owner_since_an_hour")
    async def test_crafted_token_with_the_apps_key_is_accepted(
        self, anonymous_client: httpx.AsyncClient, settings: Settings
    ) -> None:
        # The control for every negative below: only the named defect differs.
        response = await call(anonymous_client, sign(settings))
        assert response.status_code == 200, response.text


@pytest.mark.usefixtures("owner_since_an_hour")
class TestForgedOrBrokenTokens:
    @pytest.mark.parametrize("forge", FORGED.values(), ids=FORGED.keys())
    async def test_is_refused_with_401(
        self,
        anonymous_client: httpx.AsyncClient,
        settings: Settings,
        forge: Callable[[Settings], str],
    ) -> None:
        assert_not_authenticated(await call(anonymous_client, forge(settings)))


class TestTokensOfChangedUsers:
    async def _user_token(self, client: httpx.AsyncClient, app: FastAPI, settings: Settings) -> str:
        """An owner-role user whose password is an hour old, and a working token of it."""
        response = await client.post(
            "/v1/users", json={"email": USER_EMAIL, "password": USER_PASSWORD, "roles": ["owner"]}
        )
        assert response.status_code == 201, response.text
        await backdate_password(app, USER_EMAIL)
        token = sign(settings, sub=USER_EMAIL)
        response = await call(client, token)
        assert response.status_code == 200, response.text
        return token

    async def test_deleted_users_token_is_refused(
        self,
        client: httpx.AsyncClient,
        anonymous_client: httpx.AsyncClient,
        app: FastAPI,
        settings: Settings,
    ) -> None:
        token = await self._user_token(client, app, settings)
        assert (await client.delete(f"/v1/users/{USER_EMAIL}")).status_code == 204
        assert_not_authenticated(await call(anonymous_client, token))

    async def test_disabled_users_token_is_refused_until_enabled(
        self,
        client: httpx.AsyncClient,
        anonymous_client: httpx.AsyncClient,
        app: FastAPI,
        settings: Settings,
    ) -> None:
        token = await self._user_token(client, app, settings)
        response = await client.patch(f"/v1/users/{USER_EMAIL}", json={"disabled": True})
        assert response.status_code == 200, response.text
        assert_not_authenticated(await call(anonymous_client, token))
        response = await client.patch(f"/v1/users/{USER_EMAIL}", json={"disabled": False})
        assert response.status_code == 200, response.text
        assert (await call(anonymous_client, token)).status_code == 200

    async def test_token_from_before_a_password_change_is_refused(
        self,
        client: httpx.AsyncClient,
        anonymous_client: httpx.AsyncClient,
        app: FastAPI,
        settings: Settings,
    ) -> None:
        token = await self._user_token(client, app, settings)
        new_password = USER_PASSWORD + "-new"
        response = await client.patch(f"/v1/users/{USER_EMAIL}", json={"password": new_password})
        assert response.status_code == 200, response.text
        assert_not_authenticated(await call(anonymous_client, token))

        old = await anonymous_client.post(
            "/auth/token", data={"username": USER_EMAIL, "password": USER_PASSWORD}
        )
        assert old.status_code == 400, old.text
        assert old.json()["error"] == "invalid_grant"
        new = await anonymous_client.post(
            "/auth/token", data={"username": USER_EMAIL, "password": new_password}
        )
        assert new.status_code == 200, new.text
        assert (await call(anonymous_client, new.json()["access_token"])).status_code == 200


class TestTokenService:
    def test_issued_token_verifies_to_its_claims(self) -> None:
        service = TokenService("s" * 48, ttl_seconds=600)
        now = utcnow()
        verified = service.verify(service.issue("carol@example.com", 7, now))
        assert verified.subject == "carol@example.com"
        assert verified.issued_at == int(now.timestamp())
        assert verified.expires_at == verified.issued_at + 600
        assert verified.generation == 7

    def test_token_of_another_service_key_is_refused(self) -> None:
        token = TokenService("a" * 48, ttl_seconds=600).issue("carol@example.com", 0, utcnow())
        with pytest.raises(NotAuthenticated):
            TokenService("b" * 48, ttl_seconds=600).verify(token)

    def test_repr_hides_the_key(self) -> None:
        assert "s" * 48 not in repr(TokenService("s" * 48, ttl_seconds=600))


class TestLoadJwtSecret:
    def _settings(self, tmp_path: Path, environment: str, secret: str | None) -> Settings:
        return Settings(
            environment=environment,  # type: ignore[arg-type]
            data_dir=tmp_path / "data",
            jwt_secret=secret,
        )

    def test_development_generates_a_private_file_and_reuses_it(self, tmp_path: Path) -> None:
        settings = self._settings(tmp_path, "development", None)
        first = load_jwt_secret(settings)
        assert len(first.encode()) >= 32
        assert stat.S_IMODE(settings.jwt_secret_file.stat().st_mode) == 0o600
        assert settings.jwt_secret_file.read_text().strip() == first
        assert load_jwt_secret(settings) == first

    @pytest.mark.parametrize("environment", ["test", "staging", "production"])
    def test_other_environments_require_the_setting(self, tmp_path: Path, environment: str) -> None:
        settings = self._settings(tmp_path, environment, None)
        with pytest.raises(ConfigurationError, match="TOKENFARM_JWT_SECRET"):
            load_jwt_secret(settings)
        assert not settings.jwt_secret_file.exists()

    @pytest.mark.parametrize("environment", ["development", "production"])
    def test_short_secret_is_refused(self, tmp_path: Path, environment: str) -> None:
        with pytest.raises(ConfigurationError, match="at least 32 bytes"):
            load_jwt_secret(self._settings(tmp_path, environment, "s" * 31))

    def test_configured_secret_is_used_as_given(self, tmp_path: Path) -> None:
        settings = self._settings(tmp_path, "production", "p" * 32)
        assert load_jwt_secret(settings) == "p" * 32
        assert not settings.jwt_secret_file.exists()
