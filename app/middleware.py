"""The request id: taken from `X-Request-ID` when it is sane, made otherwise; on every log line of
the request and in the response. Also the access log, without query strings, and when the request
arrived (`received_at`), which decides whether a refresh may share a run that has just landed.

Pure ASGI rather than `BaseHTTPMiddleware`: that one runs the app in another task, which breaks
context variables and streaming, and buffers nothing we need.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.logs import request_id_var

REQUEST_ID_HEADER = "X-Request-ID"
# What a proxy or caller may hand us: UUIDs, hex, base64-ish trace ids. Anything else (too long,
# spaces, control characters that could forge log lines) is replaced by an id of our own.
VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+=/@-]{0,127}")
# Probes and scrapes come every few seconds; their access lines are DEBUG.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
MAX_LOGGED_PATH = 300

access_logger = logging.getLogger("tokenfarm.access")
RECEIVED_AT = "tokenfarm.received_at"


def received_at(scope: Scope) -> float | None:
    """The `time.monotonic()` at which the request reached the app (None outside a request)."""
    value = scope.get(RECEIVED_AT)
    return value if isinstance(value, float) else None


def incoming_request_id(scope: Scope) -> str | None:
    """The caller's `X-Request-ID` when it is a sane id, else None."""
    wanted = REQUEST_ID_HEADER.lower().encode()
    for name, value in scope.get("headers", ()):
        if name.lower() == wanted:
            text = value.decode("latin-1")
            return text if VALID_REQUEST_ID.fullmatch(text) else None
    return None


class RequestIdMiddleware:
    """Sets `request_id_var` for the request, answers it in `X-Request-ID`, logs the access."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[RECEIVED_AT] = time.monotonic()
        request_id = incoming_request_id(scope) or uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500  # what the server answers when the app raises before it started a response

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            # Starlette's outermost `ServerErrorMiddleware` answers an unforeseen error (its
            # handler adds the header itself) and logs it after this frame is gone, and so does
            # the server: the id stays set for those. The server runs each request in a task of
            # its own.
            _log_access(scope, status, time.perf_counter() - started)
            raise
        _log_access(scope, status, time.perf_counter() - started)
        request_id_var.reset(token)


def _printable(text: str) -> str:
    """Control characters escaped, so a crafted path can't forge a line of a text log."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _log_access(scope: Scope, status: int, seconds: float) -> None:
    """One line per request: method, path (never the query string), status, duration."""
    path = _printable(scope.get("path", "")[:MAX_LOGGED_PATH])
    level = logging.DEBUG if path in QUIET_PATHS else logging.INFO
    if not access_logger.isEnabledFor(level):
        return
    client = scope.get("client")
    duration_ms = round(seconds * 1000, 1)
    access_logger.log(
        level,
        "%s %s %d %.1f ms",
        scope.get("method", ""),
        path,
        status,
        duration_ms,
        extra={
            "method": scope.get("method"),
            "path": path,
            "status": status,
            "duration_ms": duration_ms,
            "client": client[0] if client else None,
        },
    )
