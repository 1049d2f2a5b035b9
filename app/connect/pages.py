"""The small HTML pages a browser sees at the end of a connect: connected, or what went wrong.

Self-contained (no asset from anywhere), everything echoed is escaped, and the headers keep the
callback's URL (it carries the code) out of any Referer, cache or frame.
"""

from __future__ import annotations

from html import escape

from fastapi.responses import HTMLResponse

PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
}

_TEMPLATE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{title} · tokenfarm</title>
<style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem}}
h1{{font-size:1.4rem}} .hint{{color:#444}}</style></head>
<body><main><h1>{title}</h1><p data-outcome="{outcome}">{message}</p>
<p class="hint">{hint}</p></main></body>
</html>
"""


def page(title: str, message: str, hint: str, *, status: int, outcome: str) -> HTMLResponse:
    """A page with every piece escaped (provider text included)."""
    html = _TEMPLATE.format(
        title=escape(title),
        message=escape(message),
        hint=escape(hint),
        outcome=escape(outcome),
    )
    return HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)


def connected_page(secret: str) -> HTMLResponse:
    """The secret is connected."""
    return page(
        "Connected",
        f"{secret} is connected; tokenfarm keeps its token fresh from now on.",
        "You can close this window.",
        status=200,
        outcome="connected",
    )


def refused_page(message: str, hint: str, status: int) -> HTMLResponse:
    """A connect that could not finish, saying what happened and what to do."""
    title = "Connect failed" if status >= 500 else "Connect not completed"
    return page(title, message, hint, status=status, outcome="failed")
