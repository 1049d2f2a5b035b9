"""Presets through the real API: each one is bound with one request, then `GET /refresh/{secret}`
runs the generated action against the loopback token server, which verifies what it receives."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from app.pipeline.analysis import author_needs, validate_action
from app.presets.binder import parse_params, refresher_id
from app.presets.catalog import PRESETS
from tests.auth import conftest as auth_fixtures
from tests.auth.conftest import Callers, assert_refused
from tests.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    TokenServer,
    create_secret,
    secret_value,
    setup_oauth,
)
from tests.signing_keys import rsa_key, service_account_key

KEY_CLIENT = "key-client-canary-91b2"
SERVICE_ACCOUNT = "robot@tokenfarm-test.iam.gserviceaccount.com"
TENANT = "8f1c2d3e-0000-4000-8000-123456789abc"
GRAPH_DEFAULT = "https://graph.microsoft.com/.default"
PRESET_NAMES = [
    "oauth2_refresh_token",
    "oauth2_client_credentials",
    "oauth2_jwt_bearer",
    "entra_id_client_credentials",
]

callers = auth_fixtures.callers  # the fixture of tests/auth, shared


async def bind(
    client: httpx.AsyncClient, secret: str, preset: str, **params: Any
) -> httpx.Response:
    """POST /v1/secrets/{secret}/refresher."""
    return await client.post(
        f"/v1/secrets/{secret}/refresher", json={"preset": preset, "params": params}
    )


async def bound(client: httpx.AsyncClient, secret: str, preset: str, **params: Any) -> Any:
    """Bind a preset, failing the test on any error; answers the response body."""
    response = await bind(client, secret, preset, **params)
    assert response.status_code == 200, response.text
    return response.json()


async def refresh(client: httpx.AsyncClient, secret: str) -> dict[str, Any]:
    """GET /refresh/{secret}, which must succeed."""
    response = await client.get(f"/refresh/{secret}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def client_secrets(client: httpx.AsyncClient, client_id: str = CLIENT_ID) -> None:
    """CLIENT_ID and CLIENT_SECRET, one value for all environments; an empty ACCESS_TOKEN."""
    await create_secret(client, "CLIENT_ID", client_id, environment_specific=False)
    await create_secret(client, "CLIENT_SECRET", CLIENT_SECRET, environment_specific=False)
    await create_secret(client, "ACCESS_TOKEN")


def nodes_of(action: list[dict[str, Any]]) -> list[str]:
    """The node types of an action's top level."""
    return [node["type"] for node in action]


class TestCatalog:
    async def test_lists_the_four_presets_with_param_schemas(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.get("/v1/presets")
        assert response.status_code == 200, response.text
        presets = {preset["name"]: preset for preset in response.json()}
        assert list(presets) == PRESET_NAMES
        for preset in presets.values():
            assert preset["description"]
            assert preset["params_schema"]["type"] == "object"
        refresh_schema = presets["oauth2_refresh_token"]["params_schema"]
        assert {"token_url", "client_id_secret", "refresh_token_secret"} <= set(
            refresh_schema["required"]
        )
        assert refresh_schema["properties"]["client_auth"]["default"] == "basic"
        assert set(refresh_schema["properties"]["client_auth"]["enum"]) == {
            "basic",
            "post",
            "private_key_jwt",
            "none",
        }
        credentials = presets["oauth2_client_credentials"]["params_schema"]["properties"]
        assert {"audience", "resource", "scope"} <= set(credentials)
        bearer = presets["oauth2_jwt_bearer"]["params_schema"]
        assert set(bearer["required"]) == {"service_account_secret", "scope"}
        entra = presets["entra_id_client_credentials"]["params_schema"]
        assert entra["properties"]["scope"]["default"] == GRAPH_DEFAULT
        assert entra["properties"]["authority"]["default"] == "login.microsoftonline.com"


class TestOAuth2RefreshToken:
    @pytest.mark.parametrize("client_auth", ["basic", "post"])
    async def test_refreshes_and_rotates_the_refresh_token(
        self, client: httpx.AsyncClient, token_server: TokenServer, client_auth: str
    ) -> None:
        state = token_server.state
        first_refresh = state.issue_refresh_token(CLIENT_ID, scope="read write")
        await client_secrets(client)
        await create_secret(client, "REFRESH_TOKEN", first_refresh)
        body = await bound(
            client,
            "ACCESS_TOKEN",
            "oauth2_refresh_token",
            token_url=token_server.token_url,
            client_id_secret="CLIENT_ID",
            client_secret_secret="CLIENT_SECRET",
            refresh_token_secret="REFRESH_TOKEN",
            client_auth=client_auth,
            scope="read",
        )
        assert body["service"] == "refreshers"
        assert body["endpoint"] == "ACCESS_TOKEN"
        assert body["refresh_endpoint"] == "refreshers/ACCESS_TOKEN"
        assert nodes_of(body["action"]) == ["update_object", "web_request", "if"]

        result = await refresh(client, "ACCESS_TOKEN")
        assert result["version"] == 1
        assert result["expires_at"] is not None
        access_token = await secret_value(client, "ACCESS_TOKEN")
        assert state.is_active(access_token)
        assert state.introspect(access_token)["scope"] == "read"
        rotated = await secret_value(client, "REFRESH_TOKEN")
        assert rotated != first_refresh and state.is_active(rotated)
        (entry,) = state.requests
        assert entry["grant_type"] == "refresh_token"
        assert entry["auth_method"] == client_auth
        assert entry["scope"] == "read"
        # Twice in a row: the rotated refresh token was stored and works.
        await refresh(client, "ACCESS_TOKEN")
        assert state.is_active(await secret_value(client, "REFRESH_TOKEN"))

    async def test_the_refresh_token_is_written_only_when_one_comes_back(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await client_secrets(client)
        await create_secret(client, "REFRESH_TOKEN", "rt")
        body = await bound(
            client,
            "ACCESS_TOKEN",
            "oauth2_refresh_token",
            token_url=token_server.token_url,
            client_id_secret="CLIENT_ID",
            client_secret_secret="CLIENT_SECRET",
            refresh_token_secret="REFRESH_TOKEN",
        )
        guard = body["action"][2]
        assert guard["condition"] == {"op": "has_value", "left": "{{ vars.token }}"}
        assert guard["then"][0]["secret"] == "ACCESS_TOKEN"
        assert guard["then"][1] == {
            "type": "if",
            "condition": {"op": "has_value", "left": "{{ vars.refresh }}"},
            "then": [
                {"type": "update_secret", "secret": "REFRESH_TOKEN", "value": "{{ vars.refresh }}"}
            ],
        }
        assert guard["else"][0]["type"] == "throw"

    async def test_private_key_jwt_client_authentication(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        state = token_server.state
        state.add_client_key(KEY_CLIENT, rsa_key("client").public_pem, key_id="client-key-1")
        await client_secrets(client, KEY_CLIENT)
        await create_secret(client, "REFRESH_TOKEN", state.issue_refresh_token(KEY_CLIENT))
        await create_secret(
            client, "CLIENT_KEY", rsa_key("client").private_pem, environment_specific=False
        )
        body = await bound(
            client,
            "ACCESS_TOKEN",
            "oauth2_refresh_token",
            token_url=token_server.token_url,
            client_id_secret="CLIENT_ID",
            refresh_token_secret="REFRESH_TOKEN",
            client_auth="private_key_jwt",
            private_key_secret="CLIENT_KEY",
            key_id="client-key-1",
        )
        assert nodes_of(body["action"]) == ["update_object", "sign_jwt", "web_request", "if"]
        form = body["action"][2]["body"]["form"]
        assert "auth" not in body["action"][2]
        assert form["client_assertion_type"] == (
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        )

        await refresh(client, "ACCESS_TOKEN")
        assert state.is_active(await secret_value(client, "ACCESS_TOKEN"))
        (entry,) = state.requests
        assert entry["auth_method"] == "private_key_jwt"
        assertion = entry["client_assertion"]
        assert assertion["header"]["kid"] == "client-key-1"
        claims = assertion["claims"]
        assert claims["iss"] == claims["sub"] == KEY_CLIENT
        assert claims["aud"] == token_server.token_url
        assert claims["jti"]
        assert 0 < claims["exp"] - time.time() <= 300
        # A second refresh signs a fresh assertion (a reused jti would be refused).
        await refresh(client, "ACCESS_TOKEN")


class TestOAuth2ClientCredentials:
    async def test_gets_a_token_for_an_audience_and_resource(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await client_secrets(client)
        await bound(
            client,
            "ACCESS_TOKEN",
            "oauth2_client_credentials",
            token_url=token_server.token_url,
            client_id_secret="CLIENT_ID",
            client_secret_secret="CLIENT_SECRET",
            scope="reports:read",
            audience="https://api.example.com",
            resource="https://api.example.com/reports",
        )
        result = await refresh(client, "ACCESS_TOKEN")
        assert result["expires_at"] is not None
        token = await secret_value(client, "ACCESS_TOKEN")
        answer = token_server.state.introspect(token)
        assert answer["active"] is True
        assert answer["aud"] == "https://api.example.com"
        assert answer["scope"] == "reports:read"
        (entry,) = token_server.state.requests
        assert entry["grant_type"] == "client_credentials"
        assert entry["auth_method"] == "basic"
        assert entry["resource"] == ["https://api.example.com/reports"]

    async def test_optional_params_are_left_out_of_the_request(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await client_secrets(client)
        body = await bound(
            client,
            "ACCESS_TOKEN",
            "oauth2_client_credentials",
            token_url=token_server.token_url,
            client_id_secret="CLIENT_ID",
            client_secret_secret="CLIENT_SECRET",
            client_auth="post",
        )
        assert body["params"]["client_auth"] == "post"
        await refresh(client, "ACCESS_TOKEN")
        (entry,) = token_server.state.requests
        assert entry["fields"] == ["grant_type", "client_id", "client_secret"]


class TestOAuth2JwtBearer:
    async def setup(self, client: httpx.AsyncClient, server: TokenServer, token_uri: str) -> None:
        server.state.add_jwt_issuer(
            SERVICE_ACCOUNT, rsa_key("service-account").public_pem, key_id="sa-key-1"
        )
        key_file = service_account_key(SERVICE_ACCOUNT, token_uri)
        await create_secret(client, "GOOGLE_SA", key_file, environment_specific=False)
        await create_secret(client, "ACCESS_TOKEN")

    async def test_signs_an_assertion_the_server_verifies(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await self.setup(client, token_server, token_server.token_url)
        scope = "https://www.googleapis.com/auth/cloud-platform"
        body = await bound(
            client,
            "ACCESS_TOKEN",
            "oauth2_jwt_bearer",
            service_account_secret="GOOGLE_SA",
            scope=scope,
        )
        sign = body["action"][1]
        assert sign["type"] == "sign_jwt"
        assert sign["algorithm"] == "RS256"
        # The token URL comes from the key file unless a param overrides it.
        assert body["action"][2]["url"] == "{{ secrets.GOOGLE_SA.token_uri }}"

        before = time.time()
        await refresh(client, "ACCESS_TOKEN")
        token = await secret_value(client, "ACCESS_TOKEN")
        answer = token_server.state.introspect(token)
        assert answer["active"] is True
        assert answer["client_id"] == SERVICE_ACCOUNT
        assert answer["scope"] == scope
        (entry,) = token_server.state.requests
        assert entry["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
        assert entry["status"] == 200
        # The server verified the RS256 signature with the registered public key (and kid).
        assert entry["assertion"]["header"] == {"alg": "RS256", "kid": "sa-key-1", "typ": "JWT"}
        claims = entry["assertion"]["claims"]
        assert claims["iss"] == SERVICE_ACCOUNT
        assert claims["aud"] == token_server.token_url
        assert claims["scope"] == scope
        assert "sub" not in claims
        assert before - 1 <= claims["iat"] <= time.time()
        assert claims["exp"] == claims["iat"] + 300

    async def test_subject_and_an_explicit_token_url(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await self.setup(client, token_server, "https://oauth2.googleapis.com/token")
        await bound(
            client,
            "ACCESS_TOKEN",
            "oauth2_jwt_bearer",
            service_account_secret="GOOGLE_SA",
            scope="read",
            subject="alice@example.com",
            token_url=token_server.token_url,
        )
        await refresh(client, "ACCESS_TOKEN")
        token = await secret_value(client, "ACCESS_TOKEN")
        assert token_server.state.introspect(token)["sub"] == "alice@example.com"
        claims = token_server.state.requests[0]["assertion"]["claims"]
        assert claims["sub"] == "alice@example.com"
        assert claims["aud"] == token_server.token_url

    async def test_a_key_the_server_does_not_know_fails_the_refresh(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await self.setup(client, token_server, token_server.token_url)
        token_server.state.add_jwt_issuer(SERVICE_ACCOUNT, rsa_key("rotated").public_pem)
        await bound(
            client,
            "ACCESS_TOKEN",
            "oauth2_jwt_bearer",
            service_account_secret="GOOGLE_SA",
            scope="read",
        )
        response = await client.get("/refresh/ACCESS_TOKEN")
        assert response.status_code == 502, response.text
        assert "invalid_grant" in response.json()["error"]["message"]


class TestEntraIdClientCredentials:
    async def test_gets_a_token_from_the_tenant_endpoint(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await client_secrets(client)
        body = await bound(
            client,
            "ACCESS_TOKEN",
            "entra_id_client_credentials",
            tenant_id=TENANT,
            client_id_secret="CLIENT_ID",
            client_secret_secret="CLIENT_SECRET",
            authority=token_server.url,
        )
        assert body["action"][1]["url"] == f"{token_server.url}/{TENANT}/oauth2/v2.0/token"
        await refresh(client, "ACCESS_TOKEN")
        token = await secret_value(client, "ACCESS_TOKEN")
        assert token_server.state.introspect(token)["scope"] == GRAPH_DEFAULT
        (entry,) = token_server.state.requests
        assert entry["tenant"] == TENANT
        assert entry["auth_method"] == "post"
        assert entry["scope"] == GRAPH_DEFAULT

    async def test_the_default_authority_is_microsoft(self, client: httpx.AsyncClient) -> None:
        await client_secrets(client)
        body = await bound(
            client,
            "ACCESS_TOKEN",
            "entra_id_client_credentials",
            tenant_id="contoso.onmicrosoft.com",
            client_id_secret="CLIENT_ID",
            client_secret_secret="CLIENT_SECRET",
            scope="api://reports/.default",
        )
        request = body["action"][1]
        assert request["url"] == (
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        )
        assert request["body"]["form"]["scope"] == "api://reports/.default"


class TestRebinding:
    async def test_binding_again_replaces_the_action(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await client_secrets(client)
        await create_secret(client, "REFRESH_TOKEN", "rt-unused")
        await bound(
            client,
            "ACCESS_TOKEN",
            "oauth2_refresh_token",
            token_url=token_server.token_url,
            client_id_secret="CLIENT_ID",
            client_secret_secret="CLIENT_SECRET",
            refresh_token_secret="REFRESH_TOKEN",
        )
        second = await bound(
            client,
            "ACCESS_TOKEN",
            "oauth2_client_credentials",
            token_url=token_server.token_url,
            client_id_secret="CLIENT_ID",
            client_secret_secret="CLIENT_SECRET",
        )
        response = await client.get("/v1/services/refreshers")
        assert response.status_code == 200, response.text
        [endpoint] = response.json()["endpoints"]
        assert endpoint["readable_id"] == "ACCESS_TOKEN"
        assert endpoint["action"] == second["action"]
        assert "oauth2_client_credentials" in endpoint["description"]
        await refresh(client, "ACCESS_TOKEN")
        assert token_server.state.requests[0]["grant_type"] == "client_credentials"

    async def test_each_secret_gets_its_own_endpoint(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await client_secrets(client)
        await create_secret(client, "OTHER_TOKEN")
        params = {
            "token_url": token_server.token_url,
            "client_id_secret": "CLIENT_ID",
            "client_secret_secret": "CLIENT_SECRET",
        }
        for name in ("ACCESS_TOKEN", "OTHER_TOKEN"):
            await bound(client, name, "oauth2_client_credentials", **params)
        response = await client.get("/v1/services/refreshers")
        ids = [e["readable_id"] for e in response.json()["endpoints"]]
        assert ids == ["ACCESS_TOKEN", "OTHER_TOKEN"]
        for name in ("ACCESS_TOKEN", "OTHER_TOKEN"):
            await refresh(client, name)
            secret = (await client.get(f"/v1/secrets/{name}")).json()
            assert secret["refresh_endpoint"] == f"refreshers/{name}"

    async def test_a_secret_bound_by_hand_is_moved_to_its_refresher(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await setup_oauth(client, token_server)
        await bound(
            client,
            "ACCESS_TOKEN",
            "oauth2_client_credentials",
            token_url=token_server.token_url,
            client_id_secret="CLIENT_ID",
            client_secret_secret="CLIENT_SECRET",
        )
        secret = (await client.get("/v1/secrets/ACCESS_TOKEN")).json()
        assert secret["refresh_endpoint"] == "refreshers/ACCESS_TOKEN"
        # The hand-written service is untouched.
        assert (await client.get("/v1/services/oauth")).status_code == 200

    async def test_the_generated_action_is_an_ordinary_editable_endpoint(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await client_secrets(client)
        await bound(
            client,
            "ACCESS_TOKEN",
            "oauth2_client_credentials",
            token_url=token_server.token_url,
            client_id_secret="CLIENT_ID",
            client_secret_secret="CLIENT_SECRET",
        )
        service = (await client.get("/v1/services/refreshers")).json()
        endpoint = service["endpoints"][0]
        endpoint["action"][1]["body"]["form"]["scope"] = "edited"
        body = {
            "name": service["name"],
            "endpoints": [{k: endpoint[k] for k in ("readable_id", "name", "action")}],
        }
        response = await client.put("/v1/services/refreshers", json=body)
        assert response.status_code == 200, response.text
        await refresh(client, "ACCESS_TOKEN")
        assert token_server.state.requests[0]["scope"] == "edited"

    async def test_an_endpoint_another_secret_uses_is_not_taken_over(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        await client_secrets(client)
        await create_secret(client, "OTHER_TOKEN")
        params = {
            "token_url": token_server.token_url,
            "client_id_secret": "CLIENT_ID",
            "client_secret_secret": "CLIENT_SECRET",
        }
        await bound(client, "ACCESS_TOKEN", "oauth2_client_credentials", **params)
        response = await client.patch(
            "/v1/secrets/OTHER_TOKEN", json={"refresh_endpoint": "refreshers/ACCESS_TOKEN"}
        )
        assert response.status_code == 200, response.text
        response = await bind(client, "ACCESS_TOKEN", "oauth2_client_credentials", **params)
        assert response.status_code == 409, response.text
        assert "OTHER_TOKEN" in response.json()["error"]["message"]


class TestNaming:
    def test_a_name_that_fits_is_used_as_it_is(self) -> None:
        assert refresher_id("ACCESS_TOKEN") == "ACCESS_TOKEN"
        assert refresher_id("A" * 64) == "A" * 64

    def test_long_names_get_distinct_ids_no_secret_name_can_have(self) -> None:
        first, second = "A" * 100 + "_ONE", "A" * 100 + "_TWO"
        ids = {refresher_id(first), refresher_id(second)}
        assert len(ids) == 2
        for readable_id in ids:
            assert len(readable_id) == 64
            assert readable_id[0].isdigit()  # secret names start with a letter

    async def test_a_long_secret_name_binds(
        self, client: httpx.AsyncClient, token_server: TokenServer
    ) -> None:
        name = "TOKEN_" + "X" * 100
        await client_secrets(client)
        await create_secret(client, name)
        body = await bound(
            client,
            name,
            "oauth2_client_credentials",
            token_url=token_server.token_url,
            client_id_secret="CLIENT_ID",
            client_secret_secret="CLIENT_SECRET",
        )
        assert body["endpoint"] == refresher_id(name)
        await refresh(client, name)


class TestValidation:
    @pytest.fixture(autouse=True)
    async def secrets(self, client: httpx.AsyncClient) -> None:
        await client_secrets(client)
        await create_secret(client, "REFRESH_TOKEN", "rt")

    PARAMS = {
        "token_url": "https://auth.example.com/oauth/token",
        "client_id_secret": "CLIENT_ID",
        "client_secret_secret": "CLIENT_SECRET",
        "refresh_token_secret": "REFRESH_TOKEN",
    }

    async def refused(
        self, client: httpx.AsyncClient, body: dict[str, Any], secret: str = "ACCESS_TOKEN"
    ) -> dict[str, Any]:
        response = await client.post(f"/v1/secrets/{secret}/refresher", json=body)
        assert response.status_code == 422, response.text
        error: dict[str, Any] = response.json()["error"]
        assert error["type"] in ("validation_error", "invalid_action")
        # Nothing was created or bound.
        assert (await client.get("/v1/services/refreshers")).status_code == 404
        state = (await client.get(f"/v1/secrets/{secret}")).json()
        assert state["refresh_endpoint"] is None
        return error

    async def test_unknown_preset_lists_the_known_ones(self, client: httpx.AsyncClient) -> None:
        error = await self.refused(client, {"preset": "saml", "params": self.PARAMS})
        assert error["errors"][0]["path"] == "preset"
        for name in PRESET_NAMES:
            assert name in error["message"]

    async def test_missing_param(self, client: httpx.AsyncClient) -> None:
        params = {k: v for k, v in self.PARAMS.items() if k != "refresh_token_secret"}
        error = await self.refused(client, {"preset": "oauth2_refresh_token", "params": params})
        assert error["errors"][0]["path"] == "params.refresh_token_secret"

    async def test_unknown_param(self, client: httpx.AsyncClient) -> None:
        params = {**self.PARAMS, "client_secret": "a value, not a name"}
        error = await self.refused(client, {"preset": "oauth2_refresh_token", "params": params})
        assert error["errors"][0]["path"] == "params.client_secret"
        assert "a value, not a name" not in str(error)

    async def test_unknown_secret_names_the_param_and_the_secret(
        self, client: httpx.AsyncClient
    ) -> None:
        params = {**self.PARAMS, "client_secret_secret": "NOPE", "refresh_token_secret": "NADA"}
        error = await self.refused(client, {"preset": "oauth2_refresh_token", "params": params})
        assert error["message"] == (
            "params.client_secret_secret: secret 'NOPE' does not exist (create it first)"
        )
        assert [e["path"] for e in error["errors"]] == [
            "params.client_secret_secret",
            "params.refresh_token_secret",
        ]

    @pytest.mark.parametrize(
        "token_url",
        [
            "ftp://auth.example.com/token",
            "not a url",
            "/oauth/token",
            "{{ secrets.CLIENT_SECRET }}",
            "https://auth.example.com/token#frag",
            "https://auth.example.com:99999/token",
        ],
    )
    async def test_bad_token_url(self, client: httpx.AsyncClient, token_url: str) -> None:
        params = {**self.PARAMS, "token_url": token_url}
        error = await self.refused(client, {"preset": "oauth2_refresh_token", "params": params})
        assert error["errors"][0]["path"] == "params.token_url"

    async def test_text_params_can_not_smuggle_a_binding(self, client: httpx.AsyncClient) -> None:
        params = {**self.PARAMS, "scope": "read {{ secrets.CLIENT_SECRET }}"}
        error = await self.refused(client, {"preset": "oauth2_refresh_token", "params": params})
        assert error["errors"][0]["path"] == "params.scope"
        assert "binding" in error["message"]

    @pytest.mark.parametrize(
        ("change", "path"),
        [
            ({"client_secret_secret": None}, "params.client_secret_secret"),
            ({"client_auth": "private_key_jwt"}, "params.private_key_secret"),
            ({"private_key_secret": "CLIENT_ID"}, "params.private_key_secret"),
            ({"client_auth": "none"}, "params.client_auth"),
            ({"refresh_token_secret": "ACCESS_TOKEN"}, "params.refresh_token_secret"),
        ],
    )
    async def test_params_that_do_not_go_together(
        self, client: httpx.AsyncClient, change: dict[str, Any], path: str
    ) -> None:
        params = {k: v for k, v in {**self.PARAMS, **change}.items() if v is not None}
        error = await self.refused(client, {"preset": "oauth2_refresh_token", "params": params})
        assert error["errors"][0]["path"] == path

    @pytest.mark.parametrize(
        ("params", "path"),
        [
            ({"tenant_id": "a/b"}, "params.tenant_id"),
            ({"authority": "https://login.example.com/some/path"}, "params.authority"),
            ({"authority": "login example"}, "params.authority"),
        ],
    )
    async def test_bad_entra_params(
        self, client: httpx.AsyncClient, params: dict[str, Any], path: str
    ) -> None:
        full = {
            "tenant_id": TENANT,
            "client_id_secret": "CLIENT_ID",
            "client_secret_secret": "CLIENT_SECRET",
            **params,
        }
        body = {"preset": "entra_id_client_credentials", "params": full}
        error = await self.refused(client, body)
        assert error["errors"][0]["path"] == path

    async def test_a_refresh_token_secret_runs_can_not_write(
        self, client: httpx.AsyncClient
    ) -> None:
        await create_secret(client, "SHARED_RT", "rt", environment_specific=False)
        params = {**self.PARAMS, "refresh_token_secret": "SHARED_RT"}
        error = await self.refused(client, {"preset": "oauth2_refresh_token", "params": params})
        assert error["errors"][0]["path"] == "params.refresh_token_secret"
        assert "environment-specific" in error["message"]

    async def test_a_locked_target_is_a_conflict(self, client: httpx.AsyncClient) -> None:
        await create_secret(client, "LOCKED_TOKEN", locked=True)
        body = {"preset": "oauth2_refresh_token", "params": self.PARAMS}
        response = await client.post("/v1/secrets/LOCKED_TOKEN/refresher", json=body)
        assert response.status_code == 409, response.text
        assert "locked" in response.json()["error"]["message"]

    async def test_an_unknown_target_is_not_found(self, client: httpx.AsyncClient) -> None:
        body = {"preset": "oauth2_refresh_token", "params": self.PARAMS}
        response = await client.post("/v1/secrets/MISSING/refresher", json=body)
        assert response.status_code == 404, response.text


class TestAuthorization:
    BODY = {
        "preset": "oauth2_client_credentials",
        "params": {
            "token_url": "https://auth.example.com/oauth/token",
            "client_id_secret": "CLIENT_ID",
            "client_secret_secret": "CLIENT_SECRET",
        },
    }

    async def test_binding_needs_both_services_and_secrets_manage(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient, callers: Callers
    ) -> None:
        await client_secrets(client)
        path = "/v1/secrets/ACCESS_TOKEN/refresher"
        response = await anonymous_client.post(path, json=self.BODY)
        assert response.status_code == 401, response.text
        services_only = await callers.holding("services.manage")
        assert_refused(await services_only.post(path, json=self.BODY), "secrets.manage")
        secrets_only = await callers.holding("secrets.manage")
        assert_refused(await secrets_only.post(path, json=self.BODY), "services.manage")
        assert (await client.get("/v1/services/refreshers")).status_code == 404
        both = await callers.holding("services.manage", "secrets.manage")
        refused = await both.post(path, json=self.BODY)
        assert_refused(refused, "secrets.use:CLIENT_ID")
        assert refused.json()["error"]["path"] == "action[1].auth.username"
        assert (await client.get("/v1/services/refreshers")).status_code == 404
        # Using them is enough: ACCESS_TOKEN is only written, and nothing needs reading.
        users = await callers.holding("services.manage", "secrets.manage", "secrets.use:CLIENT_*")
        response = await users.post(path, json=self.BODY)
        assert response.status_code == 200, response.text

    async def test_listing_presets_needs_services_manage(
        self, anonymous_client: httpx.AsyncClient, callers: Callers
    ) -> None:
        assert (await anonymous_client.get("/v1/presets")).status_code == 401
        secrets_only = await callers.holding("secrets.manage")
        assert_refused(await secrets_only.get("/v1/presets"), "services.manage")
        services = await callers.holding("services.manage")
        assert (await services.get("/v1/presets")).status_code == 200


PRESET_PARAMS = [
    pytest.param(
        "oauth2_refresh_token",
        {
            "token_url": "https://auth.example.com/oauth/token",
            "client_id_secret": "CLIENT_ID",
            "client_secret_secret": "CLIENT_SECRET",
            "refresh_token_secret": "REFRESH_TOKEN",
            "scope": "read",
        },
        {"CLIENT_ID", "CLIENT_SECRET", "REFRESH_TOKEN"},
        id="refresh-token-basic",
    ),
    pytest.param(
        "oauth2_refresh_token",
        {
            "token_url": "https://auth.example.com/oauth/token",
            "client_id_secret": "CLIENT_ID",
            "client_auth": "private_key_jwt",
            "private_key_secret": "CLIENT_KEY",
            "private_key_field": "private_key",
            "key_id": "k1",
            "refresh_token_secret": "REFRESH_TOKEN",
        },
        {"CLIENT_ID", "CLIENT_KEY", "REFRESH_TOKEN"},
        id="refresh-token-private-key-jwt",
    ),
    pytest.param(
        "oauth2_client_credentials",
        {
            "token_url": "https://auth.example.com/oauth/token",
            "client_id_secret": "CLIENT_ID",
            "client_auth": "post",
            "client_secret_secret": "CLIENT_SECRET",
            "audience": "api",
            "resource": "https://api.example.com",
        },
        {"CLIENT_ID", "CLIENT_SECRET"},
        id="client-credentials-post",
    ),
    pytest.param(
        "oauth2_jwt_bearer",
        {"service_account_secret": "SA_KEY", "scope": "cloud", "subject": "a@example.com"},
        {"SA_KEY"},
        id="jwt-bearer",
    ),
    pytest.param(
        "entra_id_client_credentials",
        {
            "tenant_id": "contoso",
            "client_id_secret": "CLIENT_ID",
            "client_secret_secret": "CLIENT_SECRET",
        },
        {"CLIENT_ID", "CLIENT_SECRET"},
        id="entra",
    ),
]


class TestPresetsKeepSecretsWhereTheyBelong:
    @pytest.mark.parametrize(("name", "params", "used"), PRESET_PARAMS)
    def test_every_preset_passes_the_analysis_and_needs_only_using_its_secrets(
        self, name: str, params: dict[str, Any], used: set[str]
    ) -> None:
        preset = PRESETS[name]
        action = preset.expand(parse_params(preset, params), "ACCESS_TOKEN")
        known = {
            "ACCESS_TOKEN",
            "CLIENT_ID",
            "CLIENT_SECRET",
            "CLIENT_KEY",
            "REFRESH_TOKEN",
            "SA_KEY",
        }
        nodes = validate_action(action, declared_variables=set(), known_secrets=known)
        needs = {need.permission for need in author_needs(nodes)}
        assert needs == {f"secrets.use:{secret}" for secret in used}

    def test_the_cases_cover_every_preset(self) -> None:
        assert {case.values[0] for case in PRESET_PARAMS} == set(PRESETS)
