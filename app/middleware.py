"""The request id: taken from `X-Request-ID` when it is sane, made otherwise; on every log line of
the request and in the response. Also the access log, without query strings, and when the request
arrived (`received_at`), which decides whether a refresh may share a run that has just landed.
And the bounds of a request body (`BodyLimitMiddleware`): its size and how long it may take.

Pure ASGI rather than `BaseHTTPMiddleware`: that one runs the app in another task, which breaks
context variables and streaming, and buffers nothing we need.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
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


class BodyRefused(HTTPException):
    """A request body refused while it arrives; the connection is closed after the answer.

    An `HTTPException`, so FastAPI passes it on from its body parsing and the app's handler
    answers it in the usual error shape (`app/handlers.py`); `BodyLimitMiddleware` answers it
    itself when it escapes the app.
    """

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(status_code, detail, headers={"Connection": "close"})


def too_large(limit: int) -> BodyRefused:
    """413: the body is larger than `limit` bytes."""
    return BodyRefused(413, f"the request body is larger than {limit} bytes")


class BodyLimitMiddleware:
    """Bounds what a request body may cost before anything reads or parses it.

    A declared `Content-Length` over the limit is refused at once, unread; a chunked body is
    counted as it streams and refused the moment it passes the limit; a body that hasn't fully
    arrived `timeout_seconds` after the request did is answered 408. Both close the connection,
    so a client can't keep it busy with the rest. Limits are per path (`larger`, e.g. the
    configuration document), else `max_bytes`.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        timeout_seconds: float,
        larger: dict[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_seconds = timeout_seconds
        self.larger = larger or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared, chunked = _body_framing(scope)
        if not chunked and not declared and scope.get("http_version") in ("1.0", "1.1"):
            # No body comes (HTTP/1.x frames a body only by these two headers, RFC 9112 6.3):
            # nothing to bound, and the hot GETs pay nothing for the check.
            await self.app(scope, receive, send)
            return
        limit = self.larger.get(scope.get("path", ""), self.max_bytes)
        if declared is not None and declared > limit:
            await _answer(scope, send, too_large(limit))
            return
        deadline = asyncio.get_running_loop().time() + self.timeout_seconds
        received = 0
        body_done = False
        started = False

        async def bounded_receive() -> Message:
            nonlocal received, body_done
            if body_done:
                return await receive()  # only a disconnect is left to hear
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyRefused(
                    408, f"the request body did not arrive within {self.timeout_seconds:g} s"
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large(limit)
                body_done = not message.get("more_body", False)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, bounded_receive, watched_send)
        except BodyRefused as exc:
            # Raised where nothing turned it into an answer (a task group, a middleware).
            if started:
                raise
            await _answer(scope, send, exc)


def _body_framing(scope: Scope) -> tuple[int | None, bool]:
    """The declared body length (None when absent or not a number) and whether the body is
    sent with a transfer coding (chunked): how the server knows whether a body follows."""
    declared: int | None = None
    chunked = False
    for name, value in scope.get("headers", ()):
        name = name.lower()
        if name == b"content-length":
            declared = int(value) if value.isdigit() else None
            if declared is None:
                chunked = True  # not a number: bound it as a stream
        elif name == b"transfer-encoding":
            chunked = True
    return declared, chunked


async def _answer(scope: Scope, send: Send, exc: BodyRefused) -> None:
    """Send the refusal in the error shape; the body is left unread."""
    error_type = "payload_too_large" if exc.status_code == 413 else "request_timeout"
    response = JSONResponse(
        {"error": {"type": error_type, "message": exc.detail}},
        status_code=exc.status_code,
        headers=exc.headers,
    )
    await response(scope, _nothing_to_read, send)


async def _nothing_to_read() -> Message:
    return {"type": "http.disconnect"}
