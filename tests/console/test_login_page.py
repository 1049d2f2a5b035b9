"""The login page in a real browser: the form, its messages, and what a session opens."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.conftest import OWNER_EMAIL
from tests.console.browser import ConsolePage, assert_accessible, screenshot


class TestLoginPage:
    def test_owner_logs_in_and_lands_on_secrets(self, page: ConsolePage) -> None:
        page.goto("/")
        page.page.wait_for_url("**/console/login")
        expect(page.page.get_by_role("heading", name="Log in to tokenfarm")).to_be_visible()
        assert_accessible(page)
        screenshot(page, "login")
        page.login()
        expect(page.page.get_by_role("heading", name="Secrets")).to_be_visible()
        expect(page.page.get_by_text(OWNER_EMAIL)).to_be_visible()
        nav = page.page.get_by_role("navigation", name="Main")
        pages = ("Secrets", "Runs", "Services", "Schedules", "Providers", "Accounts", "Health")
        for label in pages:
            expect(nav.get_by_role("link", name=label)).to_be_visible()

    def test_wrong_password_says_so(self, page: ConsolePage) -> None:
        page.goto("/console/login")
        page.page.get_by_label("Email").fill(OWNER_EMAIL)
        page.page.get_by_label("Password").fill("not-the-password")
        page.page.get_by_role("button", name="Log in").click()
        expect(page.page.get_by_role("alert")).to_have_text(
            "Wrong email or password (or the account is disabled)."
        )
        # The email stays filled in; the password does not.
        expect(page.page.get_by_label("Email")).to_have_value(OWNER_EMAIL)
        expect(page.page.get_by_label("Password")).to_have_value("")
        assert_accessible(page)
        screenshot(page, "login-wrong-password")

    def test_throttled_login_says_how_long_to_wait(self, page: ConsolePage) -> None:
        for _ in range(6):
            page.goto("/console/login")
            page.page.get_by_label("Email").fill(OWNER_EMAIL)
            page.page.get_by_label("Password").fill("not-the-password")
            page.page.get_by_role("button", name="Log in").click()
            page.page.get_by_role("alert").wait_for()
        expect(page.page.get_by_role("alert")).to_have_text(
            re.compile(r"Too many failed logins\. Wait \d+ seconds, then try again\.")
        )
        screenshot(page, "login-throttled")

    def test_logout_ends_the_session(self, logged_in: ConsolePage) -> None:
        logged_in.page.get_by_role("button", name="Log out").click()
        logged_in.page.wait_for_url("**/console/login")
        logged_in.goto("/console/secrets")
        logged_in.page.wait_for_url("**/console/login")
