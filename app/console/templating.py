"""Rendering console pages: Jinja2 templates (autoescaped) and the headers every page carries.

The Content-Security-Policy allows this origin only, and no inline script or style: a page can
load nothing from elsewhere (the console works offline) and injected markup can't run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import HTMLResponse

from app.console.sessions import ConsoleUser

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
STATIC_PATH = "/console/static"
templates = Jinja2Templates(directory=HERE / "templates")

CONSOLE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}

# The navigation of every page: (label, path). Pages another change adds keep their place here.
NAV = (
    ("Secrets", "/console/secrets"),
    ("Runs", "/console/runs"),
    ("Services", "/console/services"),
    ("Schedules", "/console/schedules"),
    ("Providers", "/console/providers"),
    ("Accounts", "/console/accounts"),
    ("Health", "/console/health"),
)


def page_headers(csp: str = CONSOLE_CSP) -> dict[str, str]:
    """The security headers of an HTML page."""
    return {"Content-Security-Policy": csp, **PAGE_HEADERS}


def render(
    request: Request,
    template: str,
    user: ConsoleUser | None,
    *,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    """A console page: `template` with the user, the navigation and `context`."""
    response = templates.TemplateResponse(
        request,
        template,
        {"user": user, "nav": NAV, "static": STATIC_PATH, "path": request.url.path, **context},
        status_code=status_code,
        headers={**page_headers(), **(headers or {})},
    )
    return response
