"""The Connect and Reconnect buttons in a real browser: the console starts the connect flow, the
bundled token server's consent page asks, Allow stores the tokens, and the row shows it."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from app.demo.token_server import AUTHORIZE_PATH
from tests.conftest import CLIENT_ID, CLIENT_SECRET, TokenServer
from tests.console.browser import ConsolePage, ConsoleServer, assert_accessible, screenshot
from tests.console.test_secrets_page import ok, row


@pytest.fixture
def connectable(console_server: ConsoleServer, token_server: TokenServer) -> Iterator[str]:
    """A provider at the bundled token server and the connected secret LINKED (no tokens yet);
    the server's public URL is its own loopback address, registered as the redirect URI."""
    api = console_server.api
    origin = console_server.origin
    # The server's address is known only once it listens: the same settings object the app
    # reads, given its public URL before the first flow starts.
    console_server.settings.public_url = origin
    token_server.state.add_redirect_uri(CLIENT_ID, f"{origin}/connect/callback")
    for name, value in (("CLIENT_ID", CLIENT_ID), ("CLIENT_SECRET", CLIENT_SECRET)):
        body = {"name": name, "value": value, "environment_specific": False}
        ok(api.post("/v1/secrets", json=body), 201)
    provider = {
        "name": "bundled",
        "authorization_url": token_server.url + AUTHORIZE_PATH,
        "token_url": token_server.token_url,
        "client_auth": "basic",
        "client_id_secret": "CLIENT_ID",
        "client_secret_secret": "CLIENT_SECRET",
        "scopes": ["read"],
    }
    ok(api.post("/v1/providers", json=provider), 201)
    ok(api.post("/v1/secrets", json={"name": "LINKED", "provider": "bundled"}), 201)
    yield urlsplit(token_server.url)._replace(path="").geturl()


def test_connect_then_reconnect(
    logged_in: ConsolePage, connectable: str, token_server: TokenServer
) -> None:
    page = logged_in
    page.guard.also.add(connectable)  # the consent page is the provider's, on purpose
    page.goto("/console/secrets")
    linked = row(page, "LINKED")
    expect(linked.get_by_role("link", name="Reconnect")).to_have_count(0)
    before = token_server.state.token_requests
    linked.get_by_role("link", name="Connect").click()
    page.page.wait_for_url(f"{connectable}{AUTHORIZE_PATH}**")
    page.page.get_by_role("button", name="Allow").click()
    expect(page.page.get_by_role("heading")).to_contain_text("onnected")
    screenshot(page, "connect-connected")
    assert token_server.state.token_requests == before + 1  # the one code exchange
    page.goto("/console/secrets")
    linked = row(page, "LINKED")
    expect(linked.locator(".badge")).to_have_text("ok")
    expect(linked.locator(".version")).to_have_text("1")
    expect(linked.get_by_role("link", name="Reconnect")).to_have_count(1)
    assert_accessible(page)
    body = console_server_json(page, "/v1/secrets/LINKED")
    assert body["has_value"] is True and body["provider"] == "bundled"


def console_server_json(page: ConsolePage, path: str) -> dict[str, object]:
    """An API answer, as the owner (the test's API client)."""
    data: dict[str, object] = ok(page.server.api.get(path))
    return data


def test_no_button_without_the_permission(
    browser: object, console_server: ConsoleServer, connectable: str
) -> None:
    from tests.console.browser import open_page

    api = console_server.api
    ok(api.post("/v1/roles", json={"name": "lister", "permissions": ["secrets.manage"]}), 201)
    body = {"email": "lister@example.com", "password": "lister-password-42", "roles": ["lister"]}
    ok(api.post("/v1/users", json=body), 201)
    for page in open_page(browser, console_server):
        page.login("lister@example.com", "lister-password-42")
        linked = row(page, "LINKED")
        expect(linked).to_have_count(1)
        expect(linked.get_by_role("link", name="Connect")).to_have_count(0)
        # Opening the link anyway starts nothing: the permission is checked where it starts.
        answer = page.page.request.get(
            f"{console_server.url}/console/secrets/LINKED/connect", max_redirects=0
        )
        assert answer.status == 403


def test_another_site_cannot_start_a_flow(logged_in: ConsolePage, connectable: str) -> None:
    """A navigation from another site (the browser says so in Sec-Fetch-Site) is refused, even
    with the session cookie that SameSite=Lax sends along on top-level navigations."""
    page = logged_in
    url = f"{page.server.url}/console/secrets/LINKED/connect"
    forged = page.page.request.get(url, headers={"Sec-Fetch-Site": "cross-site"}, max_redirects=0)
    assert forged.status == 403
    own = page.page.request.get(url, headers={"Sec-Fetch-Site": "same-origin"}, max_redirects=0)
    assert own.status == 302
    assert own.headers["location"].startswith(connectable + AUTHORIZE_PATH)
