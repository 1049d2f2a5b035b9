"""Put the console on an app: its pages, its static files, `/docs` and `/redoc`, and the answers
of its two exceptions (no session: go log in; a form without its CSRF token: 403 page)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from app.console import apidocs
from app.console.csrf import CsrfRefused
from app.console.pages import router as pages_router
from app.console.router import router
from app.console.sessions import LOGIN_PATH, LoginRequired
from app.console.templating import STATIC_DIR, STATIC_PATH, render


async def _login_required(request: Request, exc: Exception) -> Response:
    return RedirectResponse(LOGIN_PATH, status_code=303)


async def _csrf_refused(request: Request, exc: Exception) -> Response:
    return render(
        request,
        "error.html",
        None,
        status_code=403,
        title="Form refused",
        message="This form did not come from a page of this session (its CSRF token is "
        "missing or wrong), so nothing was changed. Go back, reload the page and try again.",
    )


def install_console(app: FastAPI) -> None:
    """Add the console and the offline API docs to `app` (created with docs_url=None and
    redoc_url=None, so FastAPI's CDN pages are not there)."""
    app.include_router(apidocs.router)
    app.include_router(router)
    app.include_router(pages_router)
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC_DIR), name="console-static")
    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(CsrfRefused, _csrf_refused)
