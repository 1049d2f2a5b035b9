"""The console's detail pages in a real browser: a secret (Show value only for readers), the run
log and a run's trace, a service's flow with Run and an edit refused at its node, API keys shown
once, and the list pages. Every page is screenshotted, checked with axe and kept offline (the
`page` fixture fails a test whose page asked another origin for anything)."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from app.demo.loopback import LoopbackServer
from app.demo.token_server import TokenServerState, create_token_server
from tests.conftest import CLIENT_ID, CLIENT_SECRET, OWNER_PASSWORD, canonical_action
from tests.console.browser import (
    DESKTOP,
    PHONE,
    ConsolePage,
    ConsoleServer,
    assert_accessible,
    open_page,
    screenshot,
)

VALUE_CANARY = "shown-value-canary-6b1f0e93"
READER_EMAIL = "reader@example.com"
VIEWER_EMAIL = "viewer@example.com"
PASSWORD = "console-pages-password-3c9d"
# What the viewer holds: everything to look at the secret, but not `secrets.read` of it.
VIEWER_PERMISSIONS = ["secrets.manage", "runs.read", "services.manage"]


@dataclass
class TokenEndpoint:
    """A loopback token server and its state."""

    state: TokenServerState
    url: str

    @property
    def token_url(self) -> str:
        """Where its token endpoint answers."""
        return f"{self.url}/oauth/token"


@pytest.fixture(scope="module")
def token_endpoint() -> Iterator[TokenEndpoint]:
    """One token server for the module, with the test client registered."""
    state = TokenServerState()
    state.add_client(CLIENT_ID, CLIENT_SECRET)
    with LoopbackServer(create_token_server(state), lifespan="off") as server:
        yield TokenEndpoint(state, server.url)


def ok(response: Any, status: int = 200) -> Any:
    """The response's JSON, failing the test on another status."""
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def setup_oauth(server: ConsoleServer, tokens: TokenEndpoint) -> None:
    """The canonical refresh against the token server, ACCESS_TOKEN bound to it, and a secret
    whose value is the canary (set by hand)."""
    api = server.api
    refresh_token = tokens.state.issue_refresh_token(CLIENT_ID)
    for name, value, specific in (
        ("CLIENT_ID", CLIENT_ID, False),
        ("CLIENT_SECRET", CLIENT_SECRET, False),
        ("REFRESH_TOKEN", refresh_token, True),
    ):
        body = {"name": name, "value": value, "environment_specific": specific}
        ok(api.post("/v1/secrets", json=body), 201)
    ok(api.post("/v1/secrets", json={"name": "ACCESS_TOKEN"}), 201)
    service = {
        "slug": "oauth",
        "name": "OAuth",
        "endpoints": [
            {
                "readable_id": "refresh-token",
                "name": "Refresh",
                "enable_log": True,
                "action": canonical_action(tokens.token_url),
            }
        ],
    }
    ok(api.post("/v1/services", json=service), 201)
    ok(api.patch("/v1/secrets/ACCESS_TOKEN", json={"refresh_endpoint": "oauth/refresh-token"}))
    expires = (datetime.now(UTC) + timedelta(hours=6)).isoformat()
    body = {"name": "SHOWN", "value": VALUE_CANARY, "environment_specific": False}
    ok(api.post("/v1/secrets", json=body), 201)
    ok(api.put("/v1/secrets/SHOWN/value", json={"value": VALUE_CANARY, "expires_at": expires}))


def add_user(server: ConsoleServer, email: str, permissions: list[str]) -> None:
    """A user holding a role of its own with `permissions`."""
    role = email.split("@")[0]
    ok(server.api.post("/v1/roles", json={"name": role, "permissions": permissions}), 201)
    user = {"email": email, "password": PASSWORD, "roles": [role]}
    ok(server.api.post("/v1/users", json=user), 201)


def csrf_of(page: ConsolePage) -> str:
    """The session's CSRF token, as the page's forms carry it."""
    token = page.page.locator("input[name=csrf_token]").first.get_attribute("value")
    assert token
    return token


def check(page: ConsolePage, name: str) -> None:
    """Screenshot, axe, and nothing from another origin."""
    screenshot(page, name)
    assert_accessible(page)
    page.guard.assert_clean()


@pytest.fixture
def oauth(console_server: ConsoleServer, token_endpoint: TokenEndpoint) -> ConsoleServer:
    """The console server with the OAuth set-up, the viewer and the reader."""
    setup_oauth(console_server, token_endpoint)
    add_user(console_server, VIEWER_EMAIL, VIEWER_PERMISSIONS)
    add_user(console_server, READER_EMAIL, ["secrets.read:SHOWN"])
    return console_server


class TestSecretPage:
    def test_a_user_without_secrets_read_gets_no_show_button_and_never_the_value(
        self, browser: Any, oauth: ConsoleServer
    ) -> None:
        for page in open_page(browser, oauth):
            page.login(VIEWER_EMAIL, PASSWORD)
            page.goto("/console/secrets/SHOWN")

            assert page.page.get_by_role("heading", name="Secret SHOWN").is_visible()
            assert page.page.get_by_role("button", name="Show value").count() == 0
            assert "secrets.read:SHOWN" in page.page.content()
            # A forged post with the session's own CSRF token: the server refuses it too.
            answer = page.page.request.post(
                f"{oauth.url}/console/secrets/SHOWN/show", form={"csrf_token": csrf_of(page)}
            )
            assert answer.status == 403
            assert VALUE_CANARY not in answer.text()
            assert VALUE_CANARY not in page.page.content()

    def test_show_value_shows_it_once_to_a_reader_and_logs_who_saw_it(
        self, browser: Any, oauth: ConsoleServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO)
        for page in open_page(browser, oauth):
            page.login()
            page.goto("/console/secrets/SHOWN")
            assert VALUE_CANARY not in page.page.content()
            check(page, "secret")

            page.page.get_by_role("button", name="Show value").click()

            shown = page.page.locator("[data-secret-value=SHOWN]")
            assert shown.inner_text() == VALUE_CANARY
            check(page, "secret-value-shown")
            page.goto("/console/secrets/SHOWN")
            assert VALUE_CANARY not in page.page.content()
        seen = [r for r in caplog.records if r.name == "tokenfarm.console.audit"]
        assert [r.getMessage() for r in seen] == [
            "secret SHOWN: value shown in the console to user:owner@example.com"
        ]
        assert not any(VALUE_CANARY in r.getMessage() for r in caplog.records)

    def test_a_reader_without_secrets_manage_sees_only_the_value_button(
        self, browser: Any, oauth: ConsoleServer
    ) -> None:
        for page in open_page(browser, oauth):
            page.login(READER_EMAIL, PASSWORD)
            page.goto("/console/secrets/SHOWN")
            assert page.page.get_by_role("heading", name="Versions").count() == 0

            page.page.get_by_role("button", name="Show value").click()

            assert page.page.locator("[data-secret-value=SHOWN]").inner_text() == VALUE_CANARY


class TestRunsAndServices:
    def test_a_refresh_shows_in_the_run_log_its_trace_and_the_plot(
        self, logged_in: ConsolePage, oauth: ConsoleServer, token_endpoint: TokenEndpoint
    ) -> None:
        refreshed = ok(oauth.api.get("/refresh/ACCESS_TOKEN"))
        page = logged_in

        page.goto("/console/runs?secret=ACCESS_TOKEN")
        rows = page.page.locator("tr[data-run]")
        assert rows.count() == 1
        check(page, "runs")
        rows.first.locator("th a").click()
        page.page.wait_for_url(f"**/console/runs/{refreshed['run_id']}")

        paths = page.page.locator(".tl-row").evaluate_all(
            "rows => rows.map(r => [r.dataset.path, r.dataset.status])"
        )
        assert paths == [
            ["action[0]", "ok"],
            ["action[1]", "ok"],
            ["action[2]", "ok"],
            ["action[2].then[0]", "ok"],
            ["action[2].then[1]", "ok"],
            ["action[2].then[1].then[0]", "ok"],
        ]
        request = page.page.locator('.tl-row[data-path="action[1]"]')
        assert "1 attempt" in request.inner_text()
        assert f"POST {token_endpoint.token_url}" in request.inner_text()
        access_token = ok(oauth.api.get("/v1/secrets/ACCESS_TOKEN/value"))["value"]
        for canary in (access_token, CLIENT_SECRET, CLIENT_ID):
            assert canary not in page.page.content()
        check(page, "run-trace")
        page.page.set_viewport_size(PHONE)
        check(page, "run-trace-phone")
        page.page.set_viewport_size(DESKTOP)

        page.goto("/console/secrets/ACCESS_TOKEN")
        assert page.page.locator(".tf-plot-mark.tf-plot-succeeded").count() == 1
        assert page.page.locator(".tf-plot-mark.tf-plot-lifetime").count() == 1
        assert access_token not in page.page.content()
        page.goto("/console/runs?status=failed")
        assert page.page.locator("tr[data-run]").count() == 0

    def test_a_service_reads_as_a_flow_and_run_runs_it(
        self, logged_in: ConsolePage, oauth: ConsoleServer, token_endpoint: TokenEndpoint
    ) -> None:
        page = logged_in
        before = token_endpoint.state.token_requests
        page.goto("/console/services")
        check(page, "services")
        page.page.get_by_role("link", name="oauth").click()

        steps = page.page.locator(".step").evaluate_all("s => s.map(e => e.dataset.path)")
        assert steps[:3] == ["action[0]", "action[1]", "action[2]"]
        assert len(steps) == 7
        request = page.page.locator('.step[data-path="action[1]"]')
        assert "secrets.CLIENT_SECRET" in request.inner_text()
        assert CLIENT_SECRET not in page.page.content()
        check(page, "service")

        # A post without the session's CSRF token runs nothing.
        forged = page.page.request.post(f"{oauth.url}/console/services/oauth/refresh-token/run")
        assert forged.status == 403
        assert token_endpoint.state.token_requests == before

        page.page.get_by_role("button", name="Run").click()

        page.page.wait_for_url("**/console/runs/*")
        assert "run" in (page.page.locator(".flash").inner_text())
        assert page.page.locator(".badge-run-succeeded").count() == 1
        assert token_endpoint.state.token_requests == before + 1

    def test_an_edit_with_errors_shows_them_at_their_nodes_and_saves_nothing(
        self, logged_in: ConsolePage, oauth: ConsoleServer, token_endpoint: TokenEndpoint
    ) -> None:
        page = logged_in
        page.goto("/console/services/oauth")
        action = copy.deepcopy(canonical_action(token_endpoint.token_url))
        action[1]["url"] = "not a url"
        action[2]["then"][0]["colour"] = "blue"
        page.page.get_by_text("Edit action").click()
        page.page.get_by_label("Action of refresh-token").fill(json.dumps(action, indent=2))
        page.page.get_by_role("button", name="Save action").click()

        invalid = page.page.locator(".step-invalid")
        assert invalid.evaluate_all("s => s.map(e => e.dataset.path)") == [
            "endpoints[0].action[2].then[0]"
        ]
        errors = page.page.locator(".step-invalid .step-errors").inner_text()
        assert "colour: unknown field" in errors
        check(page, "service-edit-error")
        stored = ok(oauth.api.get("/v1/services/oauth"))["endpoints"][0]["action"]
        assert stored == canonical_action(token_endpoint.token_url)

        # The schema is fine now; the store's own check finds the URL, at its node.
        del action[2]["then"][0]["colour"]
        page.page.get_by_label("Action of refresh-token").fill(json.dumps(action, indent=2))
        page.page.get_by_role("button", name="Save action").click()
        assert page.page.locator(".step-invalid").evaluate_all(
            "s => s.map(e => e.dataset.path)"
        ) == ["endpoints[0].action[1]"]
        assert "url: must be an absolute" in page.page.locator(".step-errors").inner_text()

        # YAML saves through the same store.
        page.page.get_by_label("YAML").check()
        action[1]["url"] = token_endpoint.token_url
        action[0]["label"] = "reset"
        page.page.get_by_label("Action of refresh-token").fill(yaml.safe_dump(action))
        page.page.get_by_role("button", name="Save action").click()
        assert "action saved" in page.page.locator(".flash").inner_text()
        stored = ok(oauth.api.get("/v1/services/oauth"))["endpoints"][0]["action"]
        assert stored[0]["label"] == "reset"


class TestAccountsAndLists:
    def test_an_api_key_is_shown_once_and_revoke_ends_it(
        self, logged_in: ConsolePage, oauth: ConsoleServer
    ) -> None:
        ok(oauth.api.post("/v1/service-accounts", json={"name": "ci", "roles": []}), 201)
        page = logged_in
        page.goto("/console/accounts")
        page.page.get_by_label("New key name for ci").fill("deploy")
        page.page.get_by_role("button", name="Create key").click()

        key = page.page.locator("[data-api-key=deploy]").inner_text()
        assert key
        check(page, "accounts-new-key")
        as_key = {"Authorization": f"Bearer {key}"}
        assert oauth.api.get("/v1/secrets", headers=as_key).status_code == 403  # known, no role
        page.page.reload()
        assert key not in page.page.content()
        page.goto("/console/accounts")
        assert key not in page.page.content()
        assert page.page.locator("[data-account=ci] tr[data-key=deploy]").count() == 1

        page.page.get_by_role("button", name="Revoke").click()

        assert "key deploy revoked" in page.page.locator(".flash").inner_text()
        assert page.page.locator("tr[data-key=deploy]").count() == 0
        assert oauth.api.get("/v1/secrets", headers=as_key).status_code == 401

    def test_schedules_health_and_providers(
        self, logged_in: ConsolePage, oauth: ConsoleServer
    ) -> None:
        ok(
            oauth.api.post(
                "/v1/roles", json={"name": "runner", "permissions": ["services.run:oauth"]}
            ),
            201,
        )
        ok(oauth.api.post("/v1/service-accounts", json={"name": "cron", "roles": ["runner"]}), 201)
        schedule = {
            "name": "hourly", "service": "oauth", "endpoint": "refresh-token",
            "cron": "0 * * * *", "timezone": "UTC", "run_as": "cron",
        }  # fmt: skip
        ok(oauth.api.post("/v1/schedules", json=schedule), 201)

        for path in ("schedules", "health", "providers"):
            response = logged_in.goto(f"/console/{path}")
            assert response.status == 200
            heading = logged_in.page.get_by_role("heading", level=1).inner_text()
            assert heading == path.title()
            check(logged_in, path)
        logged_in.goto("/console/schedules")
        assert logged_in.page.locator("tr[data-schedule=hourly]").count() == 1
        logged_in.goto("/console/secrets/ACCESS_TOKEN")
        assert "hourly" in logged_in.page.locator("#schedules-h + ul").inner_text()


def test_owner_password_never_reaches_a_page(logged_in: ConsolePage) -> None:
    """A canary of the login: no page echoes it."""
    for path in ("runs", "services", "schedules", "accounts", "health", "providers"):
        logged_in.goto(f"/console/{path}")
        assert OWNER_PASSWORD not in logged_in.page.content()
