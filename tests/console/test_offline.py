"""Offline first: every page loads everything from tokenfarm itself (the `page` fixture aborts
and records any request to another origin, and records CSP violations; both must stay empty),
and `/docs` can log in through `/auth/token`."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.conftest import OWNER_EMAIL, OWNER_PASSWORD
from tests.console.browser import ConsolePage, assert_accessible, screenshot


def assert_offline(page: ConsolePage) -> None:
    """Nothing so far left the origin or broke the page's CSP."""
    page.page.wait_for_load_state("networkidle")
    page.guard.assert_clean()


class TestNothingLeavesTheOrigin:
    @pytest.mark.parametrize("path", ["/", "/console/login"])
    def test_console_pages(self, page: ConsolePage, path: str) -> None:
        page.goto(path)
        expect(page.page.get_by_role("button", name="Log in")).to_be_visible()
        assert_offline(page)

    def test_console_pages_when_logged_in(self, logged_in: ConsolePage) -> None:
        logged_in.goto("/")
        expect(logged_in.page.get_by_role("heading", name="Secrets")).to_be_visible()
        assert_offline(logged_in)

    def test_swagger_ui(self, page: ConsolePage) -> None:
        page.goto("/docs")
        expect(page.page.locator(".swagger-ui .info .title")).to_contain_text("tokenfarm")
        expect(page.page.get_by_role("button", name="Authorize")).to_be_visible()
        assert_offline(page)
        screenshot(page, "docs", full_page=False)

    def test_redoc(self, page: ConsolePage) -> None:
        page.goto("/redoc")
        heading = page.page.get_by_role("heading", name="tokenfarm", exact=False).first
        expect(heading).to_be_visible(timeout=15_000)
        expect(page.page.get_by_text("/v1/secrets").first).to_be_attached()
        assert_offline(page)
        screenshot(page, "redoc", full_page=False)

    def test_no_page_names_another_origin(self, page: ConsolePage) -> None:
        for path in ("/console/login", "/docs", "/redoc", "/docs/oauth2-redirect"):
            response = page.page.request.get(page.server.url + path)
            assert response.status == 200
            html = response.text()
            assert "http://" not in html and "https://" not in html, path
            csp = response.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "script-src 'self';" in csp


class TestSwaggerAuthorize:
    def authorize(self, page: ConsolePage, password: str) -> int:
        """Log in through Swagger UI's Authorize dialog; answers /auth/token's status."""
        page.goto("/docs")
        page.page.get_by_role("button", name="Authorize").first.click()
        dialog = page.page.locator(".auth-container").filter(has_text="Login")
        dialog.locator("#oauth_username").fill(OWNER_EMAIL)
        dialog.locator("#oauth_password").fill(password)
        with page.page.expect_response("**/auth/token") as answer:
            dialog.locator("button.authorize").click()
        status: int = answer.value.status
        return status

    def test_a_wrong_password_shows_the_oauth_error(self, page: ConsolePage) -> None:
        assert self.authorize(page, "not-the-password") == 400
        expect(page.page.locator(".auth-container .errors")).to_contain_text(
            "invalid email or password"
        )
        screenshot(page, "docs-authorize-wrong-password", full_page=False)
        assert_offline(page)

    def test_the_right_password_authorizes_calls(self, page: ConsolePage) -> None:
        assert self.authorize(page, OWNER_PASSWORD) == 200
        dialog = page.page.locator(".auth-container").filter(has_text="Login")
        expect(dialog.get_by_role("heading", name="Authorized")).to_be_visible()
        assert_offline(page)


def test_the_login_page_is_accessible_in_dark_mode(browser: object, page: ConsolePage) -> None:
    page.page.emulate_media(color_scheme="dark")
    page.goto("/console/login")
    assert_accessible(page)
    screenshot(page, "login-dark")
