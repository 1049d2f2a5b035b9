"""Fixtures of the console tests: the browser harness (tests/console/browser.py)."""

from tests.console.browser import browser, console_server, logged_in, page

__all__ = ["browser", "console_server", "logged_in", "page"]
