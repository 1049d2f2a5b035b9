"""`POST /v1/apply`: the same plan over HTTP, for CI pipelines, with its own permission rules."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import yaml

from tests.auth.conftest import Callers, assert_refused, error_of
from tests.configuration.conftest import Setup, snapshot
from tests.conftest import create_secret, secret_value

YAML = {"content-type": "application/yaml"}
ROLES_AND_SERVICE = """\
version: 1
roles:
  - name: runner
    permissions: [services.run:ping]
service_accounts:
  - name: pinger
    roles: [runner]
services:
  - slug: ping
    name: Ping
    endpoints:
      - readable_id: go
        name: Go
        action: [{type: log, message: pong}]
schedules:
  - name: every-hour
    service: ping
    endpoint: go
    cron: "0 * * * *"
    run_as: pinger
"""


async def post_yaml(http: httpx.AsyncClient, text: str, **params: Any) -> httpx.Response:
    """POST the document as YAML."""
    return await http.post("/v1/apply", content=text.encode(), headers=YAML, params=params)


def actions(response: httpx.Response) -> list[tuple[str, str, str]]:
    """(kind, name, action) of each change that changes something."""
    assert response.status_code == 200, response.text
    return [
        (c["kind"], c["name"], c["action"])
        for c in response.json()["changes"]
        if c["action"] != "unchanged"
    ]


class TestApplyRoute:
    async def test_a_yaml_body_is_applied_and_answers_the_plan(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await post_yaml(client, ROLES_AND_SERVICE)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["applied"] is True and body["dry_run"] is False and body["prune"] is False
        assert body["summary"] == {"create": 4, "update": 0, "delete": 0, "unchanged": 0}
        assert [(c["kind"], c["name"]) for c in body["changes"]] == [
            ("role", "runner"),
            ("service_account", "pinger"),
            ("service", "ping"),
            ("schedule", "every-hour"),
        ]
        assert (await client.get("/v1/schedules/every-hour")).json()["run_as"] == "pinger"
        again = await post_yaml(client, ROLES_AND_SERVICE)
        assert again.json()["applied"] is False
        assert again.json()["summary"]["unchanged"] == 4

    async def test_text_plain_is_yaml_too(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/v1/apply",
            content=b"version: 1\nroles: [{name: plain}]\n",
            headers={"content-type": "text/plain; charset=utf-8"},
        )
        assert actions(response) == [("role", "plain", "create")]

    async def test_the_json_form_carries_the_values_of_env_references(
        self, client: httpx.AsyncClient, setup: Setup
    ) -> None:
        canary = setup.canaries.new("json-form")
        document = "version: 1\nsecrets:\n  - name: FROM_CI\n    value_from: {env: CI_VALUE}\n"
        response = await client.post(
            "/v1/apply", json={"document": document, "env": {"CI_VALUE": canary}}
        )
        assert actions(response) == [("secret", "FROM_CI", "create")]
        setup.canaries.assert_absent(response.text, "the apply answer")
        value = (await client.get("/v1/secrets/FROM_CI/value")).json()
        assert value["value"] == canary
        again = await client.post(
            "/v1/apply", json={"document": document, "env": {"CI_VALUE": canary}}
        )
        assert actions(again) == []

    async def test_a_dry_run_lists_the_plan_and_changes_nothing(
        self, client: httpx.AsyncClient
    ) -> None:
        before = await snapshot(client)
        response = await post_yaml(client, ROLES_AND_SERVICE, dry_run="true")
        assert response.json()["dry_run"] is True and response.json()["applied"] is False
        assert len(actions(response)) == 4
        assert await snapshot(client) == before

    async def test_prune_deletes_only_when_asked(self, client: httpx.AsyncClient) -> None:
        assert actions(await post_yaml(client, ROLES_AND_SERVICE))
        trimmed = "version: 1\nschedules: []\n"
        assert actions(await post_yaml(client, trimmed)) == []
        pruned = await post_yaml(client, trimmed, prune="true")
        assert actions(pruned) == [("schedule", "every-hour", "delete")]
        assert (await client.get("/v1/schedules")).json() == []
        assert (await client.get("/v1/services/ping")).status_code == 200

    async def test_an_invalid_document_lists_every_problem_with_its_line(
        self, client: httpx.AsyncClient
    ) -> None:
        text = "version: 1\nroles:\n  - name: Bad Name\n  - name: ok\n    colour: red\n"
        error = error_of(await post_yaml(client, text), 422)
        assert error["type"] == "invalid_document"
        assert [(e["file"], e["line"], e["path"]) for e in error["errors"]] == [
            ("<body>", 3, "roles[0].name"),
            ("<body>", 5, "roles[1].colour"),
        ]
        assert error["message"].startswith("<body>:3: roles[0].name: ")
        assert "(and 1 more)" in error["message"]
        assert (await client.get("/v1/roles/ok")).status_code == 404

    async def test_files_are_refused_and_the_server_environment_is_never_read(
        self, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("TF_ONLY_ON_THE_SERVER", "server-value")
        text = (
            "version: 1\nsecrets:\n"
            "  - name: A\n    value_from: {file: /etc/hostname}\n"
            "  - name: B\n    value_from: {env: TF_ONLY_ON_THE_SERVER}\n"
            "  - name: C\n    value_from: {env: TOKENFARM_ENCRYPTION_KEYS}\n"
        )
        error = error_of(await post_yaml(client, text), 422)
        problems = {e["path"]: (e["line"], e["message"]) for e in error["errors"]}
        assert problems["secrets[0].value_from.file"][0] == 4
        assert "command line" in problems["secrets[0].value_from.file"][1]
        assert "TF_ONLY_ON_THE_SERVER is not set" in problems["secrets[1].value_from.env"][1]
        assert "TOKENFARM_ENCRYPTION_KEYS is not set" in problems["secrets[2].value_from.env"][1]
        assert (await client.get("/v1/secrets")).json() == []

    @pytest.mark.parametrize(
        ("body", "headers", "status"),
        [
            (b"version: 1\n", {"content-type": "application/xml"}, 415),
            (b"\xff\xfe", YAML, 422),
            (b"{not json", {"content-type": "application/json"}, 422),
            (json.dumps({"document": 1}).encode(), {"content-type": "application/json"}, 422),
            (json.dumps({"version": 1}).encode(), {"content-type": "application/json"}, 422),
            (b"- a list", YAML, 422),
            ("ÐâAF\x0b\x90".encode(), {"content-type": "text/plain"}, 422),
        ],
    )
    async def test_a_body_it_can_not_read_is_a_clear_4xx(
        self, client: httpx.AsyncClient, body: bytes, headers: dict[str, str], status: int
    ) -> None:
        error = error_of(await client.post("/v1/apply", content=body, headers=headers), status)
        assert error["type"] in {"unsupported_media_type", "validation_error", "invalid_document"}

    async def test_a_too_large_body_is_413(self, client: httpx.AsyncClient) -> None:
        body = b"version: 1\n" + b"#" * (2 * 1024 * 1024)
        error_of(await client.post("/v1/apply", content=body, headers=YAML), 413)

    async def test_a_body_over_the_general_cap_but_within_its_own_is_read(
        self, client: httpx.AsyncClient
    ) -> None:
        # The general body cap (1 MiB) does not apply here: the JSON form may be twice a document.
        body = b"version: 1\n" + b"#" * (1024 * 1024 + 1)
        error = error_of(await client.post("/v1/apply", content=body, headers=YAML), 422)
        assert "larger than 1048576 bytes" in error["message"]

    async def test_a_value_over_the_limit_is_422_and_nothing_is_written(
        self, client: httpx.AsyncClient
    ) -> None:
        # The secret schema's limit (64 KiB) holds here too, for a new secret and an existing one.
        await create_secret(client, "KEPT", "small")
        document = (
            "version: 1\nsecrets:\n  - name: BIG\n    value_from: {env: BIG}\n"
            "  - name: KEPT\n    value_from: {env: BIG}\n"
        )
        form = {"document": document, "env": {"BIG": "x" * (64 * 1024)}}
        error = error_of(await client.post("/v1/apply", json=form), 422)
        assert error["type"] == "invalid_document"
        assert [(p["path"], p["line"]) for p in error["errors"]] == [
            ("secrets[0].value_from.env", 4),
            ("secrets[1].value_from.env", 6),
        ]
        assert "at most 65536 bytes" in error["errors"][0]["message"]
        error_of(await client.get("/v1/secrets/BIG"), 404)
        assert (await secret_value(client, "KEPT")) == "small"

    async def test_a_document_nested_2000_deep_is_422(self, client: httpx.AsyncClient) -> None:
        body = b"version: 1\nsecrets: " + b"[" * 2000 + b"]" * 2000
        error = error_of(await client.post("/v1/apply", content=body, headers=YAML), 422)
        assert error["type"] == "invalid_document"
        assert "nests deeper than" in error["message"]

    async def test_a_change_a_store_refuses_is_409_and_nothing_is_applied(
        self, client: httpx.AsyncClient
    ) -> None:
        await create_secret(client, "CLIENT_ID", "id", environment_specific=False)
        await create_secret(client, "CLIENT_SECRET", "secret", environment_specific=False)
        await create_secret(client, "X_TOKEN")
        await create_secret(client, "Y_TOKEN")
        params = {
            "token_url": "https://auth.example.com/token",
            "client_id_secret": "CLIENT_ID",
            "client_secret_secret": "CLIENT_SECRET",
        }
        bound = await client.post(
            "/v1/secrets/X_TOKEN/refresher",
            json={"preset": "oauth2_client_credentials", "params": params},
        )
        assert bound.status_code == 200, bound.text
        shared = await client.patch(
            "/v1/secrets/Y_TOKEN", json={"refresh_endpoint": "refreshers/X_TOKEN"}
        )
        assert shared.status_code == 200, shared.text
        before = await snapshot(client)
        document = {
            "version": 1,
            "roles": [{"name": "extra"}],
            "secrets": [
                {
                    "name": "X_TOKEN",
                    "refresher": {
                        "preset": "oauth2_client_credentials",
                        "params": {**params, "scope": "other"},
                    },
                }
            ],
        }
        response = await post_yaml(client, yaml.safe_dump(document))
        error = error_of(response, 409)
        assert error["message"].startswith("secret 'X_TOKEN': ")
        assert "Y_TOKEN" in error["message"]
        assert (error["kind"], error["name"]) == ("secret", "X_TOKEN")
        assert await snapshot(client) == before


class TestPermissions:
    async def test_without_a_credential_it_is_401(
        self, anonymous_client: httpx.AsyncClient
    ) -> None:
        response = await post_yaml(anonymous_client, "version: 1\nroles: []\n")
        assert error_of(response, 401)["type"] == "not_authenticated"

    async def test_a_caller_without_any_manage_permission_is_refused_before_the_body_is_read(
        self, callers: Callers
    ) -> None:
        http = await callers.holding("runs.read")
        assert_refused(await post_yaml(http, "{{ not yaml"), "secrets.manage")

    async def test_each_declared_section_needs_its_manage_permission(
        self, callers: Callers, client: httpx.AsyncClient
    ) -> None:
        http = await callers.holding("secrets.manage")
        secrets_only = "version: 1\nsecrets: [{name: MINE}]\n"
        assert actions(await post_yaml(http, secrets_only)) == [("secret", "MINE", "create")]
        with_roles = "version: 1\nsecrets: [{name: MORE}]\nroles: [{name: sneaky}]\n"
        assert_refused(await post_yaml(http, with_roles), "accounts.manage")
        # Even a plan shows what exists: a dry run needs the same permissions.
        assert_refused(await post_yaml(http, with_roles, dry_run="true"), "accounts.manage")
        for kind, section in (
            ("services.manage", "services: []"),
            ("schedules.manage", "schedules: []"),
            ("accounts.manage", "service_accounts: []"),
        ):
            assert_refused(await post_yaml(http, f"version: 1\n{section}\n"), kind)
        assert (await client.get("/v1/secrets/MORE")).status_code == 404
        assert (await client.get("/v1/roles/sneaky")).status_code == 404

    async def test_a_preset_refresher_needs_services_manage_too(self, callers: Callers) -> None:
        http = await callers.holding("secrets.manage")
        text = (
            "version: 1\nsecrets:\n  - name: T\n    refresher:\n"
            "      preset: oauth2_client_credentials\n"
            "      params: {token_url: 'https://a.example/t', client_id_secret: T}\n"
        )
        assert_refused(await post_yaml(http, text), "services.manage")

    async def test_naming_an_account_to_run_as_needs_act_as(
        self, callers: Callers, client: httpx.AsyncClient
    ) -> None:
        assert actions(await post_yaml(client, ROLES_AND_SERVICE))
        http = await callers.holding("schedules.manage", "secrets.manage")
        schedule = ROLES_AND_SERVICE.split("schedules:\n", 1)[1].replace("every-hour", "mine")
        text = f"version: 1\nschedules:\n{schedule}"
        assert_refused(await post_yaml(http, text), "act_as:pinger")
        refresh_as = "version: 1\nsecrets: [{name: S, refresh_as: pinger}]\n"
        assert_refused(await post_yaml(http, refresh_as), "act_as:pinger")
        allowed = await callers.holding("schedules.manage", "act_as:pinger")
        assert actions(await post_yaml(allowed, text)) == [("schedule", "mine", "create")]

    async def test_an_action_that_reads_a_secret_needs_using_it(
        self, callers: Callers, client: httpx.AsyncClient
    ) -> None:
        await create_secret(client, "API_KEY", "api-key-canary-93b1", environment_specific=False)
        text = (
            "version: 1\nservices:\n  - slug: uses\n    name: Uses\n    endpoints:\n"
            "      - readable_id: go\n        name: Go\n        action:\n"
            "          - {type: web_request, url: 'https://api.example.com/x',"
            " headers: {X-Key: '{{ secrets.API_KEY }}'}}\n"
        )
        http = await callers.holding("services.manage")
        for params in ({}, {"dry_run": "true"}):
            response = await post_yaml(http, text, **params)
            assert_refused(response, "secrets.use:API_KEY")
            assert response.json()["error"]["path"] == "endpoints[0].action[0].headers.X-Key"
        assert (await client.get("/v1/services/uses")).status_code == 404
        allowed = await callers.holding("services.manage", "secrets.use:API_KEY")
        assert actions(await post_yaml(allowed, text)) == [("service", "uses", "create")]

    async def test_a_preset_refresher_needs_using_its_secrets(
        self, callers: Callers, client: httpx.AsyncClient
    ) -> None:
        text = (
            "version: 1\nsecrets:\n  - name: CID\n    environment_specific: false\n"
            "  - name: T\n    refresher:\n      preset: oauth2_client_credentials\n"
            "      params: {token_url: 'https://a.example/t', client_id_secret: CID,"
            " client_secret_secret: CID}\n"
        )
        http = await callers.holding("secrets.manage", "services.manage")
        assert_refused(await post_yaml(http, text), "secrets.use:CID")
        assert (await client.get("/v1/secrets/T")).status_code == 404
        allowed = await callers.holding("secrets.manage", "services.manage", "secrets.use:CID")
        response = await post_yaml(allowed, text)
        assert response.status_code == 200, response.text

    async def test_a_role_may_grant_only_what_the_caller_holds(
        self, callers: Callers, client: httpx.AsyncClient
    ) -> None:
        http = await callers.holding("accounts.manage")
        text = "version: 1\nroles:\n  - name: escalator\n    permissions: ['*']\n"
        for params in ({}, {"dry_run": "true"}):
            response = await post_yaml(http, text, **params)
            error = error_of(response, 403)
            assert error["message"].startswith("role 'escalator': ")
            assert error["permission"] == "*"
        assert (await client.get("/v1/roles/escalator")).status_code == 404
