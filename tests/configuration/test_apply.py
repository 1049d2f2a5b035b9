"""Applying a document: from scratch, idempotent, exact updates, dry runs, pruning, values."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.configuration.export import export_document, render
from tests.configuration.conftest import (
    EMPTY,
    Setup,
    apply_setup,
    apply_text,
    changed,
    described,
    snapshot,
)
from tests.secrets.test_encryption_at_rest import raw_database


class TestFromScratch:
    async def test_creates_everything_the_document_declares(
        self, app: FastAPI, client: httpx.AsyncClient, setup: Setup
    ) -> None:
        plan = await apply_setup(app, setup)
        assert plan.count("create") == 12 and plan.count("update") == plan.count("delete") == 0

        roles = {r["name"]: r for r in (await client.get("/v1/roles")).json()}
        assert roles["refresher"]["description"] == "Refreshes the tokens"
        assert roles["reader"]["permissions"] == ["secrets.read:ACCESS_TOKEN"]
        accounts = {a["name"]: a for a in (await client.get("/v1/service-accounts")).json()}
        assert accounts["refresher"]["roles"] == ["refresher"]
        assert accounts["app"]["roles"] == ["reader"]

        secrets = {s["name"]: s for s in (await client.get("/v1/secrets")).json()}
        assert set(secrets) == {
            "CLIENT_ID",
            "CLIENT_SECRET",
            "REFRESH_TOKEN",
            "ACCESS_TOKEN",
            "CC_TOKEN",
        }
        assert secrets["CLIENT_ID"]["environment_specific"] is False
        assert secrets["CLIENT_ID"]["version"] == 1
        assert secrets["ACCESS_TOKEN"]["has_value"] is False
        assert secrets["ACCESS_TOKEN"]["refresh_endpoint"] == "oauth/refresh-token"
        assert secrets["ACCESS_TOKEN"]["refresh_as"] == "refresher"
        assert secrets["ACCESS_TOKEN"]["refresh_before_expiry_seconds"] == 120
        assert secrets["CC_TOKEN"]["refresh_endpoint"] == "refreshers/CC_TOKEN"

        services = {s["slug"]: s for s in (await client.get("/v1/services")).json()}
        assert [e["readable_id"] for e in services["oauth"]["endpoints"]] == [
            "refresh-token",
            "ping",
        ]
        assert services["oauth"]["endpoints"][1]["methods"] == ["GET"]
        assert [e["readable_id"] for e in services["refreshers"]["endpoints"]] == ["CC_TOKEN"]

        schedules = {s["name"]: s for s in (await client.get("/v1/schedules")).json()}
        hourly = schedules["hourly"]
        assert (hourly["service"], hourly["endpoint"]) == ("oauth", "refresh-token")
        assert hourly["timezone"] == "Europe/Berlin" and hourly["run_as"] == "refresher"
        nightly = schedules["ping-nightly"]
        assert nightly["cron"] == "0 3 * * *"
        assert nightly["enabled"] is False and nightly["next_run_at"] is None
        assert nightly["environments"] == ["production", "test"]

    async def test_what_it_applies_really_refreshes(
        self, app: FastAPI, client: httpx.AsyncClient, setup: Setup
    ) -> None:
        await apply_setup(app, setup)
        refreshed = await client.get("/refresh/ACCESS_TOKEN")
        assert refreshed.status_code == 200, refreshed.text
        assert (await client.get("/v1/secrets/REFRESH_TOKEN")).json()["version"] == 2
        preset = await client.get("/refresh/CC_TOKEN")
        assert preset.status_code == 200, preset.text
        # A second apply leaves the rotated refresh token alone (initial_only).
        plan = await apply_setup(app, setup)
        assert not plan.changed
        value = (await client.get("/v1/secrets/REFRESH_TOKEN/value")).json()
        assert value["version"] == 2 and value["value"] != setup.refresh_token


class TestIdempotence:
    async def test_a_second_apply_changes_nothing(
        self, app: FastAPI, client: httpx.AsyncClient, setup: Setup
    ) -> None:
        await apply_setup(app, setup)
        before = await snapshot(client)
        again = await apply_setup(app, setup)
        assert changed(again) == []
        assert again.count("unchanged") == 12
        assert await snapshot(client) == before

    async def test_a_changed_field_is_exactly_that_update(
        self, app: FastAPI, client: httpx.AsyncClient, setup: Setup
    ) -> None:
        await apply_setup(app, setup)
        document = setup.copy()
        document["secrets"][3]["description"] = "changed"
        document["services"][0]["endpoints"][1]["action"] = [{"type": "log", "message": "hi"}]
        document["schedules"][0]["cron"] = "30 * * * *"
        document["service_accounts"][1]["roles"] = ["reader", "refresher"]
        plan = await apply_setup(app, setup, text=setup.text(document))
        assert [(c.kind, c.name, c.action, c.fields) for c in changed(plan)] == [
            ("service_account", "app", "update", ["roles"]),
            ("secret", "ACCESS_TOKEN", "update", ["description"]),
            ("service", "oauth", "update", ["endpoints.ping.action"]),
            ("schedule", "hourly", "update", ["cron"]),
        ]
        assert (await client.get("/v1/secrets/ACCESS_TOKEN")).json()["description"] == "changed"
        assert (await client.get("/v1/schedules/hourly")).json()["cron"] == "30 * * * *"
        assert not (await apply_setup(app, setup, text=setup.text(document))).changed

    async def test_a_new_value_is_an_update_of_the_value_only(
        self, app: FastAPI, client: httpx.AsyncClient, setup: Setup
    ) -> None:
        await apply_setup(app, setup)
        rotated = setup.canaries.new("new-secret")
        (setup.directory / "client_secret.txt").write_text(rotated)
        plan = await apply_setup(app, setup)
        assert [(c.name, c.fields) for c in changed(plan)] == [("CLIENT_SECRET", ["value"])]
        value = (await client.get("/v1/secrets/CLIENT_SECRET/value")).json()
        assert (value["value"], value["version"]) == (rotated, 2)

    async def test_changing_a_refresher_rebinds_it(
        self, app: FastAPI, client: httpx.AsyncClient, setup: Setup
    ) -> None:
        await apply_setup(app, setup)
        document = setup.copy()
        document["secrets"][4]["refresher"]["params"]["scope"] = "read write"
        plan = await apply_setup(app, setup, text=setup.text(document))
        assert [(c.name, c.fields) for c in changed(plan)] == [("CC_TOKEN", ["refresher"])]
        refreshers = (await client.get("/v1/services/refreshers")).json()
        form = refreshers["endpoints"][0]["action"][1]["body"]["form"]
        assert form["scope"] == "read write"

    async def test_switching_a_binding_to_an_endpoint_the_same_apply_adds(
        self, app: FastAPI, client: httpx.AsyncClient, setup: Setup
    ) -> None:
        await apply_setup(app, setup)
        document = setup.copy()
        endpoints = document["services"][0]["endpoints"]
        endpoints[0]["readable_id"] = "refresh"  # the old endpoint goes away in the same apply
        document["secrets"][3]["refresh_endpoint"] = "oauth/refresh"
        plan = await apply_setup(app, setup, text=setup.text(document))
        assert described(plan) == {
            ("secret", "ACCESS_TOKEN", "update"),
            ("service", "oauth", "update"),
            ("schedule", "hourly", "update"),
        }
        secret = (await client.get("/v1/secrets/ACCESS_TOKEN")).json()
        assert secret["refresh_endpoint"] == "oauth/refresh"
        assert (await client.get("/v1/schedules/hourly")).json()["endpoint"] == "refresh"
        assert (await client.get("/refresh/ACCESS_TOKEN")).status_code == 200


class TestDryRun:
    async def test_lists_the_diff_and_changes_nothing(
        self, app: FastAPI, client: httpx.AsyncClient, setup: Setup
    ) -> None:
        empty = await snapshot(client)
        plan = await apply_setup(app, setup, dry_run=True)
        assert plan.count("create") == 12
        assert await snapshot(client) == empty
        await apply_setup(app, setup)
        applied = await snapshot(client)
        document = setup.copy()
        document["roles"][1]["permissions"].append("runs.read")
        del document["schedules"][1]
        plan = await apply_setup(app, setup, text=setup.text(document), dry_run=True, prune=True)
        assert [(c.kind, c.name, c.action, c.fields) for c in changed(plan)] == [
            ("role", "reader", "update", ["permissions"]),
            ("schedule", "ping-nightly", "delete", []),
        ]
        assert await snapshot(client) == applied


class TestPrune:
    async def test_only_with_prune_and_only_in_declared_sections(
        self, app: FastAPI, client: httpx.AsyncClient, setup: Setup
    ) -> None:
        await apply_setup(app, setup)
        extra = await client.post("/v1/roles", json={"name": "hand-made"})
        assert extra.status_code == 201, extra.text
        document = setup.copy()
        document["secrets"] = [s for s in document["secrets"] if s["name"] != "CC_TOKEN"]
        del document["schedules"]  # an absent section is not managed, so never pruned

        without = await apply_setup(app, setup, text=setup.text(document))
        assert not without.changed
        assert (await client.get("/v1/secrets/CC_TOKEN")).status_code == 200

        plan = await apply_setup(app, setup, text=setup.text(document), prune=True)
        assert described(plan) == {
            ("secret", "CC_TOKEN", "delete"),
            ("role", "hand-made", "delete"),
            ("service", "refreshers", "delete"),
        }
        assert (await client.get("/v1/secrets/CC_TOKEN")).status_code == 404
        assert (await client.get("/v1/services/refreshers")).status_code == 404
        assert (await client.get("/v1/roles/hand-made")).status_code == 404
        roles = {r["name"] for r in (await client.get("/v1/roles")).json()}
        assert {"owner", "anonymous"} <= roles  # built-in roles are never pruned
        assert len((await client.get("/v1/schedules")).json()) == 2

    async def test_pruning_a_role_users_hold_warns_naming_them(
        self, app: FastAPI, client: httpx.AsyncClient, setup: Setup
    ) -> None:
        await apply_setup(app, setup)
        role = await client.post("/v1/roles", json={"name": "on-call", "permissions": []})
        assert role.status_code == 201, role.text
        for email in ("bob@example.com", "ann@example.com"):
            user = {"email": email, "password": "x" * 16, "roles": ["on-call"]}
            created = await client.post("/v1/users", json=user)
            assert created.status_code == 201, created.text

        dry = await apply_setup(app, setup, prune=True, dry_run=True)
        assert ("role", "on-call", "delete") in described(dry)
        [warning] = [w for w in dry.warnings if "on-call" in w]
        assert "ann@example.com, bob@example.com" in warning
        assert (await client.get("/v1/users/bob@example.com")).json()["roles"] == ["on-call"]

        # Without --prune the role stays, and nothing is said about it.
        kept = await apply_setup(app, setup)
        assert not [w for w in kept.warnings if "on-call" in w]

        done = await apply_setup(app, setup, prune=True)
        assert any("on-call" in w for w in done.warnings)
        assert (await client.get("/v1/users/bob@example.com")).json()["roles"] == []

    async def test_an_empty_document_with_prune_empties_every_declared_section(
        self, app: FastAPI, client: httpx.AsyncClient, setup: Setup
    ) -> None:
        await apply_setup(app, setup)
        plan = await apply_text(app, EMPTY, prune=True)
        assert plan.count("delete") == 13 and plan.count("create") == 0
        for path in ("/v1/secrets", "/v1/services", "/v1/schedules", "/v1/service-accounts"):
            assert (await client.get(path)).json() == [], path
        assert {r["name"] for r in (await client.get("/v1/roles")).json()} == {"owner", "anonymous"}


class TestValues:
    async def test_values_from_env_and_file_land_encrypted_and_read_back(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        setup: Setup,
        settings: Settings,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.DEBUG)
        setup.env["TF_CLIENT_ID"] = client_id = setup.canaries.new("client-id")
        plan = await apply_setup(app, setup)
        setup.canaries.assert_absent(repr(plan), "the plan")
        read = (await client.get("/v1/secrets/CLIENT_ID/value")).json()
        assert read["value"] == client_id
        # The file's trailing newline is not part of the value.
        read = (await client.get("/v1/secrets/CLIENT_SECRET/value")).json()
        assert read["value"] == setup.client_secret
        read = (await client.get("/v1/secrets/REFRESH_TOKEN/value")).json()
        assert read["value"] == setup.refresh_token and read["environment"] == "test"
        stored = await raw_database(settings)
        assert b"CLIENT_SECRET" in stored
        setup.canaries.assert_absent(stored.decode("latin-1"), "the database")
        setup.canaries.assert_absent(caplog.text, "the log")

    async def test_a_json_file_becomes_an_object(
        self, app: FastAPI, client: httpx.AsyncClient, setup: Setup
    ) -> None:
        (setup.directory / "key.json").write_text('{"client_email": "a@b.c", "n": 1}')
        text = (
            "version: 1\nsecrets:\n  - name: SA_KEY\n"
            "    value_from: {file: key.json, format: json}\n"
        )
        await apply_text(app, text, directory=setup.directory)
        value = (await client.get("/v1/secrets/SA_KEY/value")).json()["value"]
        assert value == {"client_email": "a@b.c", "n": 1}
        assert not (await apply_text(app, text, directory=setup.directory)).changed

    async def test_overwriting_a_value_a_run_wrote_warns(
        self, app: FastAPI, client: httpx.AsyncClient, setup: Setup
    ) -> None:
        document = setup.copy()
        del document["secrets"][2]["value_from"]["initial_only"]
        await apply_setup(app, setup, text=setup.text(document))
        assert (await client.get("/refresh/ACCESS_TOKEN")).status_code == 200
        plan = await apply_setup(app, setup, text=setup.text(document), dry_run=True)
        assert [(c.name, c.fields) for c in changed(plan)] == [("REFRESH_TOKEN", ["value"])]
        assert any("initial_only" in w and "REFRESH_TOKEN" in w for w in plan.warnings)


class TestExport:
    async def test_export_then_apply_on_an_empty_database_reproduces_it(
        self, app: FastAPI, client: httpx.AsyncClient, setup: Setup, settings: Settings
    ) -> None:
        await apply_setup(app, setup)
        assert (await client.get("/refresh/ACCESS_TOKEN")).status_code == 200
        async with app.state.session_factory() as session:
            exported = await export_document(session, settings)
        text = render(exported, settings)
        setup.canaries.assert_absent(text, "the export")
        access = next(s for s in exported["secrets"] if s["name"] == "ACCESS_TOKEN")
        assert access["value_from"] == {"env": "ACCESS_TOKEN", "initial_only": True}
        assert "value_from" not in next(s for s in exported["secrets"] if s["name"] == "CC_TOKEN")
        before = await snapshot(client)
        values = {
            name: (await client.get(f"/v1/secrets/{name}/value")).json()["value"]
            for name in ("CLIENT_ID", "CLIENT_SECRET", "REFRESH_TOKEN", "ACCESS_TOKEN")
        }
        env = dict(values)

        # The export describes the live configuration: applying it here changes nothing.
        assert not (await apply_text(app, text, env=env)).changed
        # Empty the database, then apply the export: the same configuration and values again.
        await apply_text(app, EMPTY, prune=True)
        assert (await client.get("/v1/secrets")).json() == []
        plan = await apply_text(app, text, env=env)
        assert plan.count("create") == 13
        after = await snapshot(client)
        assert _comparable(after) == _comparable(before)
        for name, value in values.items():
            assert (await client.get(f"/v1/secrets/{name}/value")).json()["value"] == value
        async with app.state.session_factory() as session:
            again = await export_document(session, settings)
        # Values now come from the document, not from a run: only initial_only may differ.
        assert _without_initial_only(again) == _without_initial_only(exported)

    async def test_export_of_an_empty_database_applies(
        self, app: FastAPI, settings: Settings
    ) -> None:
        async with app.state.session_factory() as session:
            text = render(await export_document(session, settings), settings)
        assert not (await apply_text(app, text)).changed


def _without_initial_only(document: dict[str, Any]) -> dict[str, Any]:
    secrets = [
        {**s, "value_from": {"env": s["value_from"]["env"]}} if "value_from" in s else s
        for s in document["secrets"]
    ]
    return {**document, "secrets": secrets}


def _comparable(state: dict[str, object]) -> dict[str, object]:
    """The snapshot without what a re-creation can't keep (timestamps, versions, health)."""
    volatile = {
        "created_at",
        "updated_at",
        "version",
        "expires_at",
        "next_refresh_at",
        "last_refreshed_at",
        "status",
        "failure_count",
        "last_error",
        "last_run_at",
        "last_status",
        "last_run_id",
        "created_by",
    }

    def strip(item: object) -> object:
        if isinstance(item, dict):
            return {k: strip(v) for k, v in item.items() if k not in volatile}
        if isinstance(item, list):
            return [strip(v) for v in item]
        return item

    return {path: strip(items) for path, items in state.items()}
