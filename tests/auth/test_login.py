"""Login (`POST /auth/token`), the credential header, the anonymous role and the OpenAPI schemes."""

from __future__ import annotations

import logging

import httpx
import pytest
from jose import jwt

from app.config import Settings
from tests.conftest import OWNER_EMAIL, OWNER_PASSWORD, create_secret

USER_EMAIL = "alice@example.com"
# A canary: no response and no log line may ever carry it.
USER_PASSWORD = "alice-password-canary-3b9d"
PUBLIC_ROUTES = {"/auth/token", "/healthz", "/readyz", "/connect/callback", "/connect/link"}


async def create_user(
    client: httpx.AsyncClient,
    email: str = USER_EMAIL,
    password: str = USER_PASSWORD,
    roles: tuple[str, ...] = ("owner",),
) -> None:
    """A user through the API, failing the test on any error."""
    response = await client.post(
        "/v1/users", json={"email": email, "password": password, "roles": list(roles)}
    )
    assert response.status_code == 201, response.text


async def log_in(http: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    """`POST /auth/token` with the OAuth2 password form."""
    return await http.post("/auth/token", data={"username": username, "password": password})


def assert_not_authenticated(response: httpx.Response) -> str:
    """A 401 in the error shape with a bearer challenge; answers the message."""
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert error["type"] == "not_authenticated"
    message: str = error["message"]
    return message


class TestLogin:
    async def test_login_answers_a_bearer_token_that_works(
        self,
        client: httpx.AsyncClient,
        anonymous_client: httpx.AsyncClient,
        settings: Settings,
    ) -> None:
        await create_user(client)
        response = await log_in(anonymous_client, USER_EMAIL, USER_PASSWORD)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"access_token", "token_type", "expires_in"}
        assert body["token_type"] == "bearer"
        assert body["expires_in"] == settings.jwt_ttl_seconds
        token = body["access_token"]
        protected = await anonymous_client.get(
            "/v1/secrets", headers={"Authorization": f"Bearer {token}"}
        )
        assert protected.status_code == 200, protected.text
        assert protected.json() == []

    async def test_token_carries_the_documented_claims(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient, settings: Settings
    ) -> None:
        await create_user(client)
        token = (await log_in(anonymous_client, USER_EMAIL, USER_PASSWORD)).json()["access_token"]
        assert jwt.get_unverified_header(token)["alg"] == "HS256"
        claims = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=["HS256"],
            audience="tokenfarm-api",
            issuer="tokenfarm",
        )
        assert claims["sub"] == USER_EMAIL
        assert claims["exp"] - claims["iat"] == settings.jwt_ttl_seconds

    async def test_email_is_matched_case_insensitively(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient
    ) -> None:
        await create_user(client)
        response = await log_in(anonymous_client, " Alice@Example.COM ", USER_PASSWORD)
        assert response.status_code == 200, response.text

    async def test_wrong_password_and_unknown_email_get_the_same_401(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient
    ) -> None:
        await create_user(client)
        wrong_password = await log_in(anonymous_client, USER_EMAIL, USER_PASSWORD + "x")
        unknown_email = await log_in(anonymous_client, "nobody@example.com", USER_PASSWORD)
        message = assert_not_authenticated(wrong_password)
        assert assert_not_authenticated(unknown_email) == message
        assert "access_token" not in wrong_password.text

    async def test_disabled_user_cannot_log_in(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient
    ) -> None:
        await create_user(client)
        response = await client.patch(f"/v1/users/{USER_EMAIL}", json={"disabled": True})
        assert response.status_code == 200, response.text
        refused = await log_in(anonymous_client, USER_EMAIL, USER_PASSWORD)
        unknown = await log_in(anonymous_client, "nobody@example.com", USER_PASSWORD)
        assert assert_not_authenticated(refused) == assert_not_authenticated(unknown)

    async def test_owner_logs_in_with_the_init_password(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient
    ) -> None:
        response = await log_in(anonymous_client, OWNER_EMAIL, OWNER_PASSWORD)
        assert response.status_code == 200, response.text

    async def test_missing_password_is_a_validation_error(
        self, anonymous_client: httpx.AsyncClient
    ) -> None:
        response = await anonymous_client.post("/auth/token", data={"username": USER_EMAIL})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["type"] == "validation_error"

    @pytest.mark.parametrize("username", ["nobody\x00@example.com", "", "x" * 5000])
    async def test_odd_usernames_are_refused_like_any_miss(
        self, anonymous_client: httpx.AsyncClient, username: str
    ) -> None:
        response = await log_in(anonymous_client, username, USER_PASSWORD)
        if response.status_code != 422:
            assert_not_authenticated(response)

    async def test_password_never_appears_in_responses_or_logs(
        self,
        client: httpx.AsyncClient,
        anonymous_client: httpx.AsyncClient,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        with caplog.at_level(logging.DEBUG):
            await create_user(client)
            responses = [
                await log_in(anonymous_client, USER_EMAIL, USER_PASSWORD),
                await log_in(anonymous_client, USER_EMAIL, USER_PASSWORD + "-wrong"),
                await log_in(anonymous_client, "nobody@example.com", USER_PASSWORD),
                await client.get(f"/v1/users/{USER_EMAIL}"),
                await client.get("/v1/users"),
            ]
        assert [r.status_code for r in responses] == [200, 401, 401, 200, 200]
        for response in responses:
            assert USER_PASSWORD not in response.text
            assert "password_hash" not in response.text
            assert "$argon2" not in response.text
        assert USER_PASSWORD not in caplog.text


class TestCredentialHeader:
    @pytest.mark.parametrize(
        "authorization",
        ["Basic YWxpY2U6c2VjcmV0", "Bearer", "Bearer ", "Token abc", "garbage"],
    )
    async def test_unreadable_authorization_is_401_not_anonymous(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient, authorization: str
    ) -> None:
        await create_secret(client, "PUBLIC_X", "public-value")
        response = await client.patch(
            "/v1/roles/anonymous", json={"permissions": ["secrets.read:PUBLIC_X"]}
        )
        assert response.status_code == 200, response.text
        response = await anonymous_client.get(
            "/v1/secrets/PUBLIC_X/value", headers={"Authorization": authorization}
        )
        assert_not_authenticated(response)

    async def test_scheme_name_is_case_insensitive(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient
    ) -> None:
        await create_user(client)
        token = (await log_in(anonymous_client, USER_EMAIL, USER_PASSWORD)).json()["access_token"]
        response = await anonymous_client.get(
            "/v1/secrets", headers={"Authorization": f"bearer {token}"}
        )
        assert response.status_code == 200, response.text


class TestAnonymousCaller:
    async def test_no_credential_is_401_with_a_challenge(
        self, anonymous_client: httpx.AsyncClient
    ) -> None:
        message = assert_not_authenticated(await anonymous_client.get("/v1/secrets"))
        assert "secrets.manage" in message

    async def test_anonymous_role_opens_exactly_what_it_grants(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient
    ) -> None:
        await create_secret(client, "PUBLIC_X", "public-value")
        await create_secret(client, "PRIVATE_Y", "private-value")
        before = await anonymous_client.get("/v1/secrets/PUBLIC_X/value")
        assert_not_authenticated(before)

        response = await client.patch(
            "/v1/roles/anonymous", json={"permissions": ["secrets.read:PUBLIC_X"]}
        )
        assert response.status_code == 200, response.text

        opened = await anonymous_client.get("/v1/secrets/PUBLIC_X/value")
        assert opened.status_code == 200, opened.text
        assert opened.json()["value"] == "public-value"
        assert_not_authenticated(await anonymous_client.get("/v1/secrets/PRIVATE_Y/value"))
        assert_not_authenticated(await anonymous_client.get("/v1/secrets"))

    async def test_a_bad_credential_never_falls_back_to_anonymous(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient
    ) -> None:
        await create_secret(client, "PUBLIC_X", "public-value")
        response = await client.patch(
            "/v1/roles/anonymous", json={"permissions": ["secrets.read:PUBLIC_X"]}
        )
        assert response.status_code == 200, response.text
        for credential in ("not-a-token", "tfk_not-a-key", "a.b.c"):
            response = await anonymous_client.get(
                "/v1/secrets/PUBLIC_X/value", headers={"Authorization": f"Bearer {credential}"}
            )
            assert_not_authenticated(response)


class TestSecuritySchemesInOpenAPI:
    async def test_both_schemes_are_declared(self, anonymous_client: httpx.AsyncClient) -> None:
        schema = (await anonymous_client.get("/openapi.json")).json()
        schemes = schema["components"]["securitySchemes"]
        oauth2 = [s for s in schemes.values() if s["type"] == "oauth2"]
        bearer = [
            s for s in schemes.values() if s["type"] == "http" and s["scheme"].lower() == "bearer"
        ]
        assert len(oauth2) == 1 and len(bearer) == 1, schemes
        assert oauth2[0]["flows"]["password"]["tokenUrl"] == "/auth/token"

    async def test_protected_operations_accept_either_scheme(
        self, anonymous_client: httpx.AsyncClient
    ) -> None:
        schema = (await anonymous_client.get("/openapi.json")).json()
        names = set(schema["components"]["securitySchemes"])
        checked = 0
        for path, operations in schema["paths"].items():
            for method, operation in operations.items():
                security = operation.get("security", [])
                declared = {name for requirement in security for name in requirement}
                if path in PUBLIC_ROUTES or path.startswith(("/docs", "/openapi")):
                    assert not declared, f"{method.upper()} {path} is public"
                    continue
                # Alternatives, not both at once: each requirement names a single scheme.
                assert declared == names, f"{method.upper()} {path} declares {security}"
                assert all(len(requirement) == 1 for requirement in security)
                checked += 1
        assert checked > 20
        for route in ("/v1/secrets", "/v1/roles", "/v1/users", "/v1/service-accounts"):
            assert route in schema["paths"]
