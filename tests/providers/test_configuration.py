"""Config as code: the `providers:` section is planned with the provider store's rules, applied
through the store in the one transaction, and exported so that applying the export changes
nothing."""

from __future__ import annotations

import textwrap
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI

from app.config import Settings
from app.configuration.export import export_document, render
from app.configuration.loader import DocumentInvalid, Problem
from tests.auth.conftest import Callers, assert_refused, callers
from tests.configuration.conftest import apply_text, described

__all__ = ["callers"]
TENANT = "3f2c8e1a-0000-4000-8000-1234567890ab"
DOCUMENT = f"""\
version: 1
secrets:
  - name: CLIENT_ID
    environment_specific: false
    value_from: {{env: TF_CLIENT_ID}}
  - name: CLIENT_SECRET
    environment_specific: false
    value_from: {{env: TF_CLIENT_SECRET}}
providers:
  - name: google
    catalog: google
    client_id_secret: CLIENT_ID
    client_secret_secret: CLIENT_SECRET
  - name: entra
    catalog: microsoft-entra-id
    catalog_params: {{tenant: {TENANT}}}
    scopes: [openid, offline_access, https://graph.microsoft.com/User.Read]
    client_id_secret: CLIENT_ID
    client_secret_secret: CLIENT_SECRET
  - name: acme
    description: Our own authorization server
    authorization_url: https://auth.acme.example/authorize
    token_url: https://auth.acme.example/token
    revocation_url: https://auth.acme.example/revoke
    client_auth: none
    client_id_secret: CLIENT_ID
    scopes: [read]
    authorize_params: {{audience: api}}
    refresh_token_reuse_grace_seconds: 10
"""
ENV = {"TF_CLIENT_ID": "client-id-canary-77f1", "TF_CLIENT_SECRET": "client-secret-canary-0c2e"}


async def problems_of(app: FastAPI, text: str, **options: Any) -> dict[str, Problem]:
    """path -> problem of a document that is refused."""
    with pytest.raises(DocumentInvalid) as caught:
        await apply_text(app, text, env=ENV, **options)
    return {problem.path: problem for problem in caught.value.problems}


class TestApply:
    async def test_creates_providers_filled_from_the_catalog(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        plan = await apply_text(app, DOCUMENT, env=ENV)

        assert {("provider", n, "create") for n in ("google", "entra", "acme")} <= described(plan)
        google = (await client.get("/v1/providers/google")).json()
        assert google["issuer"] == "https://accounts.google.com"
        assert google["authorize_params"] == {"access_type": "offline", "prompt": "consent"}
        entra = (await client.get("/v1/providers/entra")).json()
        assert entra["issuer"] == f"https://login.microsoftonline.com/{TENANT}/v2.0"
        acme = (await client.get("/v1/providers/acme")).json()
        assert acme["client_auth"] == "none" and acme["refresh_token_reuse_grace_seconds"] == 10

    async def test_applying_again_changes_nothing_and_a_change_names_its_fields(
        self, app: FastAPI
    ) -> None:
        await apply_text(app, DOCUMENT, env=ENV)
        assert not (await apply_text(app, DOCUMENT, env=ENV)).changed

        changed = DOCUMENT.replace("scopes: [read]", "scopes: [read, write]")
        plan = await apply_text(app, changed, env=ENV, dry_run=True)

        assert [(c.kind, c.name, c.fields) for c in plan.changes if c.action != "unchanged"] == [
            ("provider", "acme", ["scopes"])
        ]

    async def test_prune_deletes_providers_the_document_no_longer_names(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        await apply_text(app, DOCUMENT, env=ENV)
        document = yaml.safe_load(DOCUMENT)
        document["providers"] = document["providers"][:1]

        plan = await apply_text(app, yaml.safe_dump(document), env=ENV, prune=True)

        assert {("provider", "entra", "delete"), ("provider", "acme", "delete")} == described(plan)
        assert [p["name"] for p in (await client.get("/v1/providers")).json()] == ["google"]


class TestProblems:
    async def test_each_problem_points_at_its_line_and_nothing_is_applied(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        text = textwrap.dedent(
            """\
            version: 1
            providers:
              - name: broken
                client_auth: post
                client_id_secret: NOT_DECLARED
              - name: entra
                catalog: microsoft-entra-id
                client_id_secret: NOT_DECLARED
                client_secret_secret: NOT_DECLARED
            """
        )

        found = await problems_of(app, text)

        assert "does not exist" in found["providers[0].client_id_secret"].message
        assert found["providers[0].client_id_secret"].line == 5
        assert "issuer" in found["providers[0].authorization_url"].message
        assert "client_auth post" in found["providers[0].client_secret_secret"].message
        assert "tenant" in found["providers[1].catalog_params.tenant"].message
        assert (await client.get("/v1/providers")).json() == []

    async def test_a_malformed_provider_is_refused_as_the_api_refuses_it(
        self, app: FastAPI
    ) -> None:
        text = textwrap.dedent(
            """\
            version: 1
            providers:
              - name: google
                issuer: https://accounts.google.com
                authorize_params: {state: fixed}
            """
        )

        found = await problems_of(app, text)

        assert "tokenfarm makes a fresh one" in found["providers[0].authorize_params"].message
        assert found["providers[0].authorize_params"].line == 5

    async def test_a_provider_name_given_twice_is_refused(self, app: FastAPI) -> None:
        document = yaml.safe_load(DOCUMENT)
        document["providers"].append(document["providers"][0])

        found = await problems_of(app, yaml.safe_dump(document))

        assert "declared twice" in found["providers[3].name"].message

    async def test_pruning_a_secret_a_kept_provider_names_is_refused(self, app: FastAPI) -> None:
        await apply_text(app, DOCUMENT, env=ENV)
        text = "version: 1\nsecrets: []\n"

        found = await problems_of(app, text, prune=True)

        assert "provider 'google'" in found["secrets"].message


class TestExport:
    async def test_export_then_apply_dry_run_reports_no_change(
        self, app: FastAPI, settings: Settings
    ) -> None:
        await apply_text(app, DOCUMENT, env=ENV)
        async with app.state.session_factory() as session:
            exported = await export_document(session, settings)
        text = render(exported, settings)

        # The export's placeholders, holding the values the secrets have.
        env = {"CLIENT_ID": ENV["TF_CLIENT_ID"], "CLIENT_SECRET": ENV["TF_CLIENT_SECRET"]}
        plan = await apply_text(app, text, env=env, dry_run=True)

        assert not plan.changed, [(c.kind, c.name, c.fields) for c in plan.changes]
        assert plan.count("unchanged") >= 5
        for canary in ENV.values():
            assert canary not in text
        providers = {entry["name"]: entry for entry in exported["providers"]}
        # What the catalog fills in anyway is left out; what it can't know is kept.
        assert providers["google"] == {
            "name": "google",
            "catalog": "google",
            "client_id_secret": "CLIENT_ID",
            "client_secret_secret": "CLIENT_SECRET",
        }
        assert providers["entra"]["issuer"] == f"https://login.microsoftonline.com/{TENANT}/v2.0"
        assert providers["acme"]["client_auth"] == "none"

    async def test_the_export_recreates_the_providers_on_an_empty_database(
        self, app: FastAPI, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        await apply_text(app, DOCUMENT, env=ENV)
        before = (await client.get("/v1/providers")).json()
        async with app.state.session_factory() as session:
            text = render(await export_document(session, settings), settings)
        await apply_text(app, "version: 1\nproviders: []\nsecrets: []\n", prune=True)
        assert (await client.get("/v1/providers")).json() == []

        await apply_text(app, text, env={"CLIENT_ID": "a", "CLIENT_SECRET": "b"})

        after = (await client.get("/v1/providers")).json()
        strip = ("created_at", "updated_at")
        assert [{k: v for k, v in p.items() if k not in strip} for p in after] == [
            {k: v for k, v in p.items() if k not in strip} for p in before
        ]


class TestPermission:
    async def test_a_providers_section_needs_providers_manage(self, callers: Callers) -> None:
        http = await callers.holding("secrets.manage")
        text = "version: 1\nproviders: []\n"

        response = await http.post(
            "/v1/apply",
            content=text.encode(),
            headers={"content-type": "application/yaml"},
            params={"dry_run": "true"},
        )

        assert_refused(response, "providers.manage")
