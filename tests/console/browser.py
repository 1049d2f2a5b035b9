"""The real-browser harness of the console tests: the system's headless Chromium driven by
Playwright, a real tokenfarm server on loopback, and the checks every page gets.

- `browser` (one per test module and worker): `/usr/bin/chromium` with the flags below.
  Playwright makes a fresh temporary profile for every launch (it refuses a `--user-data-dir`
  argument to `launch`), so no state survives. Missing Chromium or Playwright: skipped with
  a reason, or a failure under CI=true.
- `console_server`: tokenfarm (SQLite, a fresh copy of the migrated template) served by uvicorn
  in a thread, with the owner account and an API client holding the owner's login token.
- `page`: a new browser context per test whose every request to another origin is aborted and
  recorded, and whose CSP violations are recorded; both lists must be empty when the test ends.
- `screenshot(page, name)`: `artifacts/screenshots/<name>.png` (gitignored).
- `assert_accessible(page)`: axe-core (vendored in tests/console/vendor/) finds no serious or
  critical violation.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest
from cryptography.fernet import Fernet

from app.auth.accounts import ensure_owner
from app.config import Settings
from app.db import create_engine, session_factory, utcnow
from app.demo.loopback import LoopbackServer
from app.main import create_app
from tests.conftest import OWNER_EMAIL, OWNER_PASSWORD, RATE_LIMITS

CHROMIUM = Path(os.environ.get("TOKENFARM_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "artifacts" / "screenshots"
AXE = Path(__file__).resolve().parent / "vendor" / "axe-core" / "axe.min.js"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
T = TypeVar("T")


def browser_unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it on CI, where the browser must be installed."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true, so this is an error)")
    pytest.skip(reason)


def in_thread(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to its end on a loop of its own thread: Playwright's sync API keeps an
    event loop running in the test's thread, where `asyncio.run` refuses to start."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(work())).result()


@pytest.fixture(scope="module")
def browser(sqlite_template: Path) -> Iterator[Any]:
    """One headless Chromium per test module and worker.

    Not per session: Playwright's sync API keeps an event loop running in the test's thread
    while it is started, and the async tests that a worker runs next would find it there
    (pytest-asyncio can't start its own); stopping it with the module clears the way. It takes
    the migrated SQLite template so that is made first, for the same reason (migrating runs
    `asyncio.run`)."""
    if not CHROMIUM.exists():
        browser_unavailable(
            f"no Chromium at {CHROMIUM}: apt-get install -y chromium chromium-driver"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        browser_unavailable("Playwright is not installed: pip install -e '.[dev]'")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield instance
        finally:
            instance.close()


@dataclass
class ConsoleServer:
    """A running tokenfarm and an API client logged in as the owner."""

    url: str
    settings: Settings
    api: httpx.Client

    @property
    def origin(self) -> str:
        """scheme://host:port of the server."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"


def console_settings(database_url: str, data_dir: Path) -> Settings:
    """Settings of a console test's server (as tests/conftest.py's, on SQLite)."""
    return Settings(
        environment="test",
        data_dir=data_dir,
        database_url=database_url,
        encryption_keys=Fernet.generate_key().decode(),
        jwt_secret=secrets.token_urlsafe(48),
        egress_allow="127.0.0.0/8,::1",
        scheduler_enabled=False,
        **{f"rate_limit_{kind}": "100000/minute" for kind in RATE_LIMITS},
    )


async def _create_owner(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session, session.begin():
            await ensure_owner(session, OWNER_EMAIL, OWNER_PASSWORD)
    finally:
        await engine.dispose()


@pytest.fixture
def console_server(sqlite_template: Path, tmp_path: Path) -> Iterator[ConsoleServer]:
    """tokenfarm on a fresh SQLite copy, served on loopback, with the owner account.

    SQLite only: the stores under the console run on both backends in the API tests, and the
    session logic in tests/console/test_sessions.py (httpx) on both too."""
    path = tmp_path / "tokenfarm.db"
    shutil.copy(sqlite_template, path)
    database_url = f"sqlite:///{path}"
    in_thread(lambda: _create_owner(database_url))
    settings = console_settings(database_url, tmp_path)
    app = create_app(settings)
    token = app.state.tokens.issue(OWNER_EMAIL, 0, utcnow())
    with LoopbackServer(app) as server:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as api:
            yield ConsoleServer(url=server.url, settings=settings, api=api)


@dataclass
class OriginGuard:
    """What a page tried to load from elsewhere, and the CSP violations it reported."""

    origin: str
    foreign: list[str] = field(default_factory=list)
    csp_violations: list[str] = field(default_factory=list)
    # Origins a test sends the browser to on purpose (a provider's consent page).
    also: set[str] = field(default_factory=set)

    def route(self, route: Any) -> None:
        """Let same-origin requests through; abort and record every other one."""
        url = route.request.url
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}" in {self.origin, *self.also}:
            route.continue_()
        else:
            self.foreign.append(url)
            route.abort("blockedbyclient")

    def console(self, message: Any) -> None:
        """Record the browser's reports of what the Content-Security-Policy refused."""
        if message.type == "error" and "Content Security Policy" in message.text:
            self.csp_violations.append(message.text)

    def assert_clean(self) -> None:
        """Nothing left the origin and nothing broke the CSP."""
        assert self.foreign == [], f"requests to other origins: {self.foreign}"
        assert self.csp_violations == [], f"CSP violations: {self.csp_violations}"


@dataclass
class ConsolePage:
    """A browser page on the test's server, with its origin guard."""

    page: Any
    server: ConsoleServer
    guard: OriginGuard

    def goto(self, path: str) -> Any:
        """Open a path of the server; answers the response."""
        return self.page.goto(self.server.url + path)

    def login(self, email: str = OWNER_EMAIL, password: str = OWNER_PASSWORD) -> None:
        """Log in through the login form and land on the secrets page."""
        self.goto("/console/login")
        self.page.get_by_label("Email").fill(email)
        self.page.get_by_label("Password").fill(password)
        self.page.get_by_role("button", name="Log in").click()
        self.page.wait_for_url("**/console/secrets")


def open_page(browser: Any, server: ConsoleServer, **context_options: Any) -> Iterator[ConsolePage]:
    """A fresh context and page for a test; its origin guard is checked when it ends."""
    context = browser.new_context(**{"viewport": DESKTOP, **context_options})
    guard = OriginGuard(server.origin)
    context.route("**/*", guard.route)
    page = context.new_page()
    page.on("console", guard.console)
    page.set_default_timeout(15_000)
    try:
        yield ConsolePage(page=page, server=server, guard=guard)
        guard.assert_clean()
    finally:
        context.close()


@pytest.fixture
def page(browser: Any, console_server: ConsoleServer) -> Iterator[ConsolePage]:
    """A new page on the test's server (offline-checked)."""
    yield from open_page(browser, console_server)


@pytest.fixture
def logged_in(page: ConsolePage) -> ConsolePage:
    """A page logged in as the owner, on the secrets page."""
    page.login()
    return page


def screenshot(page: ConsolePage, name: str, *, full_page: bool = True) -> Path:
    """Save what the page shows as artifacts/screenshots/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.page.screenshot(path=str(path), full_page=full_page)
    return path


def assert_accessible(page: ConsolePage) -> None:
    """axe-core finds no serious or critical violation on the page as it is now.

    axe is evaluated through the browser's debugging protocol, which the page's CSP does not
    govern (a `<script>` tag would be refused, rightly)."""
    if not page.page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.page.evaluate(AXE.read_text(encoding="utf-8") + "\n;true")
    result = page.page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
        ".map(v => ({id: v.id, impact: v.impact, help: v.help,"
        " nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}))"
    )
    serious = [v for v in result if v["impact"] in ("serious", "critical")]
    assert serious == [], f"accessibility violations: {serious}"
