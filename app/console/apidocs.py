"""`/docs` (Swagger UI) and `/redoc` (ReDoc), served from this process's own files.

FastAPI's built-in pages load their scripts, styles and favicon from CDNs and start Swagger UI
with an inline script; these load the vendored copies under `/console/static/vendor/`
(VENDORED.md there names versions and licences) and start from served `.js` files, so the pages
work offline under a Content-Security-Policy that allows this origin only. Inline *styles* are
allowed on these two pages: both libraries set style attributes as they render.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.console.templating import page_headers, templates

OAUTH2_REDIRECT_PATH = "/docs/oauth2-redirect"
DOCS_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self'; worker-src 'self' blob:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)

router = APIRouter(include_in_schema=False)


def _page(request: Request, template: str) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        template,
        {
            "title": request.app.title,
            "openapi_url": request.app.openapi_url,
            "oauth2_redirect_url": OAUTH2_REDIRECT_PATH,
        },
        headers=page_headers(DOCS_CSP),
    )


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    """The API explorer (Swagger UI)."""
    return _page(request, "apidocs/swagger.html")


@router.get(OAUTH2_REDIRECT_PATH)
async def swagger_ui_redirect(request: Request) -> HTMLResponse:
    """Where an OAuth provider sends Swagger UI's authorization back."""
    return _page(request, "apidocs/oauth2-redirect.html")


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    """The API reference (ReDoc)."""
    return _page(request, "apidocs/redoc.html")
