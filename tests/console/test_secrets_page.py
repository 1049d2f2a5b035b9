"""The Secrets page in a real browser, against real refreshes through the bundled token server:
states, Refresh, Set value, Roll back, the filter, CSRF, and that no value reaches the HTML."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.conftest import CLIENT_ID, CLIENT_SECRET, TokenServer, canonical_action
from tests.console.browser import (
    PHONE,
    ConsolePage,
    ConsoleServer,
    assert_accessible,
    open_page,
    screenshot,
)

CANARY_V1 = "canary-first-value-0c9d7e"
CANARY_V2 = "canary-second-value-5b1a42"
MANAGER_EMAIL = "manager@example.com"
MANAGER_PASSWORD = "manager-password-canary-77"


def ok(response: Any, status: int = 200) -> Any:
    """The JSON of an API answer that must have `status`."""
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def refresher(server: TokenServer, prefix: str) -> list[dict[str, Any]]:
    """The canonical refresh, writing `{prefix}_ACCESS` and `{prefix}_REFRESH`."""
    text = json.dumps(canonical_action(server.token_url))
    text = text.replace("ACCESS_TOKEN", f"{prefix}_ACCESS")
    text = text.replace("REFRESH_TOKEN", f"{prefix}_REFRESH")
    action: list[dict[str, Any]] = json.loads(text)
    return action


def add_refreshed_secret(console: ConsoleServer, server: TokenServer, prefix: str) -> None:
    """`{prefix}_ACCESS`, refreshed by service `{prefix.lower()}` through the token server."""
    api = console.api
    refresh_token = server.state.issue_refresh_token(CLIENT_ID)
    ok(api.post("/v1/secrets", json={"name": f"{prefix}_REFRESH", "value": refresh_token}), 201)
    ok(api.post("/v1/secrets", json={"name": f"{prefix}_ACCESS"}), 201)
    slug = prefix.lower()
    endpoint = {"readable_id": "refresh", "name": "Refresh", "action": refresher(server, prefix)}
    ok(api.post("/v1/services", json={"slug": slug, "name": prefix, "endpoints": [endpoint]}), 201)
    ok(api.patch(f"/v1/secrets/{prefix}_ACCESS", json={"refresh_endpoint": f"{slug}/refresh"}))


@pytest.fixture
def secrets_in_three_states(console_server: ConsoleServer, token_server: TokenServer) -> None:
    """GOOD_ACCESS ok (refreshed once), BAD_ACCESS failing (the token server answered 500s),
    GONE_ACCESS needs_reauth (invalid_grant), and CANARY with two hand-set versions."""
    api = console_server.api
    for name, value in (("CLIENT_ID", CLIENT_ID), ("CLIENT_SECRET", CLIENT_SECRET)):
        body = {"name": name, "value": value, "environment_specific": False}
        ok(api.post("/v1/secrets", json=body), 201)
    for prefix in ("GOOD", "BAD", "GONE"):
        add_refreshed_secret(console_server, token_server, prefix)
    ok(api.get("/refresh/GOOD_ACCESS"))
    # One fault: a refresh whose request may have reached the server is not retried.
    token_server.state.queue_faults("http_500")
    assert api.get("/refresh/BAD_ACCESS").status_code == 502
    token_server.state.queue_faults("invalid_grant")
    assert api.get("/refresh/GONE_ACCESS").status_code == 502
    ok(api.post("/v1/secrets", json={"name": "CANARY", "value": CANARY_V1}), 201)
    ok(api.put("/v1/secrets/CANARY/value", json={"value": CANARY_V2}))


def row(page: ConsolePage, name: str) -> Any:
    """The table row of a secret."""
    return page.page.locator(f'tr[data-secret="{name}"]')


def values_of(console: ConsoleServer) -> list[str]:
    """Every current secret value (through the API's value read)."""
    values = []
    for secret in ok(console.api.get("/v1/secrets")):
        if secret["has_value"]:
            values.append(str(ok(console.api.get(f"/v1/secrets/{secret['name']}/value"))["value"]))
    return values


@pytest.mark.usefixtures("secrets_in_three_states")
class TestSecretsPage:
    def test_shows_each_secret_with_its_status(
        self, logged_in: ConsolePage, console_server: ConsoleServer
    ) -> None:
        page = logged_in
        expect(row(page, "GOOD_ACCESS").locator(".badge")).to_have_text("ok")
        expect(row(page, "BAD_ACCESS").locator(".badge")).to_have_text("failing")
        expect(row(page, "GONE_ACCESS").locator(".badge")).to_have_text("needs reauth")
        expect(row(page, "GOOD_ACCESS").locator(".version")).to_have_text("1")
        expect(row(page, "BAD_ACCESS")).to_contain_text("500")
        expect(row(page, "GONE_ACCESS")).to_contain_text("invalid_grant")
        # Only secrets with a refresh endpoint offer Refresh.
        expect(row(page, "GOOD_ACCESS").get_by_role("button", name="Refresh")).to_be_visible()
        expect(row(page, "CANARY").get_by_role("button", name="Refresh")).to_have_count(0)
        assert_accessible(page)
        screenshot(page, "secrets")
        html = page.page.content()
        for value in [*values_of(console_server), CANARY_V1, CLIENT_SECRET]:
            assert value not in html

    def test_refresh_button_refreshes_once(
        self, logged_in: ConsolePage, token_server: TokenServer
    ) -> None:
        page = logged_in
        before = token_server.state.token_requests
        row(page, "GOOD_ACCESS").get_by_role("button", name="Refresh").click()
        expect(page.page.get_by_role("status")).to_have_text("GOOD_ACCESS refreshed: now version 2")
        expect(row(page, "GOOD_ACCESS").locator(".version")).to_have_text("2")
        assert token_server.state.token_requests == before + 1
        screenshot(page, "secrets-refreshed")

    def test_failed_refresh_says_why(
        self, logged_in: ConsolePage, token_server: TokenServer
    ) -> None:
        page = logged_in
        token_server.state.queue_faults("invalid_grant")
        row(page, "GOOD_ACCESS").get_by_role("button", name="Refresh").click()
        expect(page.page.get_by_role("status")).to_contain_text("GOOD_ACCESS: refresh failed")
        expect(row(page, "GOOD_ACCESS").locator(".badge")).to_have_text("needs reauth")
        expect(row(page, "GOOD_ACCESS").locator(".version")).to_have_text("1")

    def test_roll_back_makes_the_previous_value_current(
        self, logged_in: ConsolePage, console_server: ConsoleServer
    ) -> None:
        page = logged_in
        row(page, "CANARY").get_by_role("button", name="Roll back").click()
        expect(page.page.get_by_role("status")).to_have_text(
            "CANARY: rolled back to version 1, now version 3"
        )
        expect(row(page, "CANARY").locator(".version")).to_have_text("3")
        assert ok(console_server.api.get("/v1/secrets/CANARY/value"))["value"] == CANARY_V1
        assert CANARY_V1 not in page.page.content()

    def test_set_value_writes_a_new_version(
        self, logged_in: ConsolePage, console_server: ConsoleServer
    ) -> None:
        page = logged_in
        canary = row(page, "CANARY")
        canary.get_by_text("Set value").click()
        canary.get_by_label("New value of CANARY").fill("canary-third-value-e3f1")
        canary.get_by_role("button", name="Save value").click()
        expect(page.page.get_by_role("status")).to_have_text("CANARY: value set, now version 3")
        value = ok(console_server.api.get("/v1/secrets/CANARY/value"))["value"]
        assert value == "canary-third-value-e3f1"
        assert "canary-third-value-e3f1" not in page.page.content()

    def test_filter_by_status(self, logged_in: ConsolePage) -> None:
        page = logged_in
        page.page.get_by_label("Status").select_option("failing")
        page.page.get_by_role("button", name="Filter").click()
        page.page.wait_for_url(re.compile(r"status=failing"))
        names = page.page.locator("tr[data-secret]").evaluate_all(
            "rows => rows.map(r => r.dataset.secret)"
        )
        assert names == ["BAD_ACCESS", "BAD_REFRESH"]

    def test_forged_posts_are_refused_and_change_nothing(
        self, logged_in: ConsolePage, console_server: ConsoleServer, token_server: TokenServer
    ) -> None:
        before = token_server.state.token_requests
        request = logged_in.page.request  # shares the logged-in browser's cookies
        url = console_server.url + "/console/secrets/GOOD_ACCESS/refresh"
        for form in ({}, {"csrf_token": "0" * 64}):
            refused = request.post(url, form=form, max_redirects=0)
            assert refused.status == 403
            assert "CSRF" in refused.text()
        rollback = request.post(
            console_server.url + "/console/secrets/CANARY/rollback", form={}, max_redirects=0
        )
        assert rollback.status == 403
        assert token_server.state.token_requests == before
        assert ok(console_server.api.get("/v1/secrets/GOOD_ACCESS"))["version"] == 1
        assert ok(console_server.api.get("/v1/secrets/CANARY"))["version"] == 2

    def test_the_session_cookie_is_no_api_credential(
        self, logged_in: ConsolePage, console_server: ConsoleServer
    ) -> None:
        response = logged_in.page.request.get(console_server.url + "/v1/secrets")
        assert response.status == 401
        assert response.json()["error"]["type"] == "not_authenticated"

    def test_a_phone_sees_cards(self, browser: Any, console_server: ConsoleServer) -> None:
        for page in open_page(browser, console_server, viewport=PHONE):
            page.login()
            header = page.page.locator("table.secrets thead")
            assert header.bounding_box() is None or header.bounding_box()["width"] <= 1
            expect(row(page, "GOOD_ACCESS").get_by_role("button", name="Refresh")).to_be_visible()
            assert_accessible(page)
            screenshot(page, "secrets-phone")


class TestWhatAUserMaySee:
    def test_without_run_rights_there_is_no_refresh_button(
        self,
        browser: Any,
        console_server: ConsoleServer,
        token_server: TokenServer,
    ) -> None:
        api = console_server.api
        body = {"name": "secret-keeper", "permissions": ["secrets.manage"]}
        ok(api.post("/v1/roles", json=body), 201)
        user = {"email": MANAGER_EMAIL, "password": MANAGER_PASSWORD, "roles": ["secret-keeper"]}
        ok(api.post("/v1/users", json=user), 201)
        for name, value in (("CLIENT_ID", CLIENT_ID), ("CLIENT_SECRET", CLIENT_SECRET)):
            body = {"name": name, "value": value, "environment_specific": False}
            ok(api.post("/v1/secrets", json=body), 201)
        add_refreshed_secret(console_server, token_server, "GOOD")
        for page in open_page(browser, console_server):
            page.login(MANAGER_EMAIL, MANAGER_PASSWORD)
            expect(row(page, "GOOD_ACCESS")).to_be_visible()
            expect(row(page, "GOOD_ACCESS").get_by_role("button", name="Refresh")).to_have_count(0)
            # The server refuses it anyway: no second way around services.run.
            token = page.page.locator('input[name="csrf_token"]').first.get_attribute("value")
            before = token_server.state.token_requests
            forced = page.page.request.post(
                console_server.url + "/console/secrets/GOOD_ACCESS/refresh",
                form={"csrf_token": token or ""},
                max_redirects=0,
            )
            assert forced.status == 403
            assert "services.run" in forced.text()
            assert token_server.state.token_requests == before
