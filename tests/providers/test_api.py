"""`/v1/providers`: create from explicit URLs, an issuer or a catalog entry; every provider that
can't work is a 422 naming its field; replace, delete, and the permission."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.secrets.models import Secret
from tests.auth.conftest import Callers, assert_refused, callers, error_of
from tests.conftest import create_secret
from tests.providers.conftest import EXPLICIT, client_secrets, create_provider

__all__ = ["callers"]


def problems(response: httpx.Response) -> dict[str, str]:
    """path -> message of a 422."""
    error = error_of(response, 422)
    assert error["type"] == "validation_error", error
    return {problem["path"]: problem["message"] for problem in error["errors"]}


class TestCreate:
    async def test_explicit_urls_are_stored_with_the_defaults(
        self, client: httpx.AsyncClient
    ) -> None:
        await client_secrets(client)

        created = await create_provider(client, **EXPLICIT, scopes=["read", "write"])

        assert created["name"] == "acme" and created["catalog"] is None
        assert created["token_url"] == "https://auth.acme.example/token"
        assert created["client_auth"] == "basic" and created["pkce"] is True
        assert created["scopes"] == ["read", "write"] and created["authorize_params"] == {}
        assert created["refresh_token_reuse_grace_seconds"] == 0 and created["warnings"] == []
        assert "client-secret-canary" not in str(created)
        assert (await client.get("/v1/providers/acme")).json() == created
        assert [p["name"] for p in (await client.get("/v1/providers")).json()] == ["acme"]

    async def test_an_issuer_is_enough_and_nothing_is_fetched_on_create(
        self, client: httpx.AsyncClient
    ) -> None:
        await client_secrets(client)

        # Nobody answers at this address: creating does not fetch the discovery document.
        created = await create_provider(
            client,
            name="idp",
            issuer="http://127.0.0.1:9/realm",
            client_id_secret="CLIENT_ID",
            client_secret_secret="CLIENT_SECRET",
        )

        assert created["issuer"] == "http://127.0.0.1:9/realm"
        assert created["authorization_url"] is None and created["token_url"] is None

    async def test_a_catalog_entry_fills_everything_but_the_credentials(
        self, client: httpx.AsyncClient
    ) -> None:
        await client_secrets(client)

        created = await create_provider(
            client,
            name="google",
            catalog="google",
            client_id_secret="CLIENT_ID",
            client_secret_secret="CLIENT_SECRET",
        )

        assert created["issuer"] == "https://accounts.google.com"
        assert created["authorize_params"] == {"access_type": "offline", "prompt": "consent"}
        assert created["scopes"] == ["openid", "email"] and created["client_auth"] == "post"

    async def test_given_fields_win_over_the_catalog(self, client: httpx.AsyncClient) -> None:
        await client_secrets(client)

        created = await create_provider(
            client,
            name="google",
            catalog="google",
            scopes=["openid"],
            authorize_params={"access_type": "offline"},
            client_auth="basic",
            client_id_secret="CLIENT_ID",
            client_secret_secret="CLIENT_SECRET",
        )

        assert created["scopes"] == ["openid"] and created["client_auth"] == "basic"
        assert created["authorize_params"] == {"access_type": "offline"}

    async def test_a_catalog_placeholder_is_filled_from_catalog_params(
        self, client: httpx.AsyncClient
    ) -> None:
        await client_secrets(client)
        tenant = "3f2c8e1a-0000-4000-8000-1234567890ab"

        entra = await create_provider(
            client,
            name="entra",
            catalog="microsoft-entra-id",
            catalog_params={"tenant": tenant},
            client_id_secret="CLIENT_ID",
            client_secret_secret="CLIENT_SECRET",
        )
        salesforce = await create_provider(
            client,
            name="sf",
            catalog="salesforce",
            client_id_secret="CLIENT_ID",
            client_secret_secret="CLIENT_SECRET",
        )

        assert entra["issuer"] == f"https://login.microsoftonline.com/{tenant}/v2.0"
        assert "offline_access" in entra["scopes"]
        # A param with a default needs no value.
        assert salesforce["token_url"] == "https://login.salesforce.com/services/oauth2/token"

    async def test_a_public_client_needs_no_secret(self, client: httpx.AsyncClient) -> None:
        await create_secret(client, "CLIENT_ID", "public-id", environment_specific=False)

        created = await create_provider(
            client,
            name="cli",
            issuer="https://idp.example.com",
            client_auth="none",
            client_id_secret="CLIENT_ID",
        )

        assert created["client_auth"] == "none" and created["pkce"] is True

    async def test_pkce_off_for_a_confidential_client_is_accepted_with_a_warning(
        self, client: httpx.AsyncClient
    ) -> None:
        await client_secrets(client)

        created = await create_provider(client, **EXPLICIT, pkce=False)

        assert created["pkce"] is False
        assert len(created["warnings"]) == 1 and "pkce" in created["warnings"][0]

    async def test_a_taken_name_is_409(self, client: httpx.AsyncClient) -> None:
        await client_secrets(client)
        await create_provider(client, **EXPLICIT)

        error = error_of(await client.post("/v1/providers", json=EXPLICIT), 409)

        assert error["type"] == "already_exists" and "acme" in error["message"]


class TestProvidersThatCantWork:
    @pytest.mark.parametrize(
        ("changes", "field", "words"),
        [
            ({"authorization_url": None}, "authorization_url", "issuer"),
            ({"token_url": None}, "token_url", "issuer"),
            ({"client_id_secret": None}, "client_id_secret", "client id"),
            ({"client_secret_secret": None}, "client_secret_secret", "client_auth basic"),
            (
                {"client_secret_secret": None, "client_auth": "post"},
                "client_secret_secret",
                "client_auth post",
            ),
            ({"client_auth": "none"}, "client_secret_secret", "public client"),
            (
                {"client_auth": "none", "client_secret_secret": None, "pkce": False},
                "pkce",
                "PKCE",
            ),
            (
                {"client_auth": "private_key_jwt", "client_secret_secret": None},
                "private_key_secret",
                "private_key_jwt",
            ),
            ({"client_auth": "private_key_jwt"}, "client_secret_secret", "no client secret"),
            ({"private_key_secret": "CLIENT_SECRET"}, "private_key_secret", "private_key_jwt"),
            ({"client_id_secret": "MISSING_ID"}, "client_id_secret", "'MISSING_ID' does not"),
            ({"client_secret_secret": "NOPE"}, "client_secret_secret", "'NOPE' does not exist"),
            ({"catalog_params": {"tenant": "x"}}, "catalog_params.tenant", "catalog entry"),
        ],
    )
    async def test_is_422_naming_the_field(
        self, client: httpx.AsyncClient, changes: dict[str, Any], field: str, words: str
    ) -> None:
        await client_secrets(client)
        body = {**EXPLICIT, **changes}

        found = problems(await client.post("/v1/providers", json=body))

        assert field in found, found
        assert words in found[field], found
        assert (await client.get("/v1/providers")).json() == []

    @pytest.mark.parametrize(
        ("changes", "field", "words"),
        [
            ({"catalog": "microsoft-entra-id"}, "catalog_params.tenant", "tenant"),
            ({"catalog": "okta"}, "catalog_params.domain", "Okta domain"),
            (
                {"catalog": "auth0", "catalog_params": {"domain": "a.example/evil?x="}},
                "catalog_params.domain",
                "pattern",
            ),
            (
                {"catalog": "slack", "catalog_params": {"tenant": "x"}},
                "catalog_params.tenant",
                "slack has no such param",
            ),
            ({"catalog": "facebook"}, "catalog", "github"),
        ],
    )
    async def test_a_catalog_entry_without_its_params_is_422(
        self, client: httpx.AsyncClient, changes: dict[str, Any], field: str, words: str
    ) -> None:
        await client_secrets(client)
        body = {
            "name": "p",
            "client_id_secret": "CLIENT_ID",
            "client_secret_secret": "CLIENT_SECRET",
            **changes,
        }

        found = problems(await client.post("/v1/providers", json=body))

        assert field in found, found
        assert words in found[field], found

    @pytest.mark.parametrize(
        ("changes", "field", "words"),
        [
            ({"name": "Acme"}, "name", "pattern"),
            ({"name": "catalog"}, "name", "catalog"),
            ({"token_url": "ftp://auth.example/token"}, "token_url", "http"),
            ({"token_url": "/token"}, "token_url", "absolute"),
            ({"issuer": "https://idp.example.com/?tenant=1"}, "issuer", "query"),
            ({"authorize_params": {"state": "fixed"}}, "authorize_params", "state"),
            ({"authorize_params": {"redirect_uri": "https://x"}}, "authorize_params", "redirect"),
            ({"authorize_params": {"scope": "all"}}, "authorize_params", "scopes"),
            ({"scopes": ["has space"]}, "scopes[0]", "pattern"),
            ({"client_auth": "jwt"}, "client_auth", "basic"),
            ({"refresh_token_reuse_grace_seconds": -1}, "refresh_token_reuse_grace_seconds", "0"),
            ({"token": "https://x"}, "token", "unknown field"),
        ],
    )
    async def test_a_malformed_field_is_422_saying_what_to_fix(
        self, client: httpx.AsyncClient, changes: dict[str, Any], field: str, words: str
    ) -> None:
        await client_secrets(client)

        found = problems(await client.post("/v1/providers", json={**EXPLICIT, **changes}))

        assert field in found, found
        assert words in found[field], found

    async def test_every_problem_is_listed_at_once(self, client: httpx.AsyncClient) -> None:
        body = {"name": "bare", "issuer": None, "client_auth": "post"}

        found = problems(await client.post("/v1/providers", json=body))

        assert {"authorization_url", "token_url", "client_id_secret", "client_secret_secret"} <= (
            set(found)
        )


class TestReplaceAndDelete:
    async def test_put_replaces_the_definition(self, client: httpx.AsyncClient) -> None:
        await client_secrets(client)
        created = await create_provider(client, **EXPLICIT, scopes=["a"])
        body = {k: v for k, v in EXPLICIT.items() if k != "name"}

        response = await client.put(
            "/v1/providers/acme", json={**body, "token_url": "https://auth.acme.example/t2"}
        )

        assert response.status_code == 200, response.text
        replaced = response.json()
        assert replaced["token_url"] == "https://auth.acme.example/t2"
        assert replaced["scopes"] == []  # left out: the default, as on create
        assert replaced["created_at"] == created["created_at"]
        assert (await client.get("/v1/providers/acme")).json() == replaced

    async def test_a_put_that_would_not_work_changes_nothing(
        self, client: httpx.AsyncClient
    ) -> None:
        await client_secrets(client)
        created = await create_provider(client, **EXPLICIT)

        response = await client.put("/v1/providers/acme", json={"token_url": "https://x.example"})

        assert "authorization_url" in problems(response)
        assert (await client.get("/v1/providers/acme")).json() == created

    async def test_delete(self, client: httpx.AsyncClient) -> None:
        await client_secrets(client)
        await create_provider(client, **EXPLICIT)

        assert (await client.delete("/v1/providers/acme")).status_code == 204

        assert error_of(await client.get("/v1/providers/acme"), 404)["type"] == "not_found"
        assert error_of(await client.delete("/v1/providers/acme"), 404)["type"] == "not_found"

    @pytest.mark.skipif(
        not hasattr(Secret, "provider"),
        reason="connected secrets (secret.provider) land with the connect branch",
    )
    async def test_deleting_a_provider_connected_secrets_use_is_409_naming_them(
        self, client: httpx.AsyncClient
    ) -> None:
        await client_secrets(client)
        await create_provider(client, **EXPLICIT)
        for name in ("ACME_B", "ACME_A"):
            response = await client.post("/v1/secrets", json={"name": name, "provider": "acme"})
            assert response.status_code == 201, response.text

        error = error_of(await client.delete("/v1/providers/acme"), 409)

        assert error["type"] == "conflict" and error["secrets"] == ["ACME_A", "ACME_B"]
        assert "ACME_A, ACME_B" in error["message"]
        assert (await client.get("/v1/providers/acme")).status_code == 200


class TestCatalog:
    async def test_lists_every_entry_with_its_quirks(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/v1/providers/catalog")

        assert response.status_code == 200, response.text
        entries = {entry["name"]: entry for entry in response.json()}
        assert {"github", "google", "microsoft-entra-id", "slack", "salesforce", "okta"} <= set(
            entries
        )
        assert "auth0" in entries
        google = entries["google"]
        assert google["quirks"]["refresh_answer_omits_refresh_token"] is True
        assert "access_type=offline" in google["quirks"]["offline_access"]
        assert entries["microsoft-entra-id"]["params"]["tenant"]["default"] is None
        assert "{tenant}" in entries["microsoft-entra-id"]["issuer"]
        assert entries["github"]["issuer"] is None and entries["github"]["token_url"]


class TestPermission:
    async def test_every_route_needs_providers_manage(
        self, client: httpx.AsyncClient, callers: Callers
    ) -> None:
        await client_secrets(client)
        await create_provider(client, **EXPLICIT)
        http = await callers.holding("secrets.manage", "secrets.connect:*", "services.manage")
        body = {k: v for k, v in EXPLICIT.items() if k != "name"}

        for response in (
            await http.get("/v1/providers"),
            await http.get("/v1/providers/catalog"),
            await http.get("/v1/providers/acme"),
            await http.get("/v1/providers/acme/endpoints"),
            await http.post("/v1/providers", json={**EXPLICIT, "name": "other"}),
            await http.put("/v1/providers/acme", json=body),
            await http.delete("/v1/providers/acme"),
        ):
            assert_refused(response, "providers.manage")
        assert (await client.get("/v1/providers/acme")).status_code == 200

    async def test_providers_manage_is_enough(self, callers: Callers) -> None:
        http = await callers.holding("providers.manage")

        assert (await http.get("/v1/providers")).status_code == 200
        assert (await http.get("/v1/providers/catalog")).status_code == 200

    async def test_without_a_credential_it_is_401(
        self, anonymous_client: httpx.AsyncClient
    ) -> None:
        assert error_of(await anonymous_client.get("/v1/providers"), 401)
