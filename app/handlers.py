"""Turns every error into `{"error": {"type", "message", ...}}` with a fitting status."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import InternalError, MethodNotAllowed, TokenfarmError
from app.pipeline.schemas import NODE_TYPES

logger = logging.getLogger("tokenfarm")

# Pydantic puts the tag of a discriminated union into an error's location; readers don't want it.
UNION_TAGS = {*NODE_TYPES, "comparison", "all", "any", "not", "basic", "bearer"}
HTTP_ERROR_TYPES = {
    400: "bad_request", 401: "not_authenticated", 403: "permission_denied", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type",
}


def format_location(loc: tuple[Any, ...]) -> str:
    """`("body", "endpoints", 0, "action", 2, "if", "then", 0)` -> `endpoints[0].action[2].then[0]`."""
    parts: list[str] = []
    expect_tag = False
    for item in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        if expect_tag and isinstance(item, str) and item in UNION_TAGS:
            expect_tag = False
            continue
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(f".{item}" if parts else str(item))
        expect_tag = isinstance(item, int) or item in ("condition", "not", "auth")
    return "".join(parts)


def describe_error(error: dict[str, Any]) -> str:
    """A validation error as a sentence that says what to fix."""
    ctx = error.get("ctx") or {}
    if error["type"] == "union_tag_invalid":
        return f"unknown node type {ctx.get('tag')!r} (known: {', '.join(NODE_TYPES)})"
    if error["type"] == "union_tag_not_found":
        return f"every node needs a 'type' (one of: {', '.join(NODE_TYPES)})"
    if error["type"] == "extra_forbidden":
        return "unknown field"
    message = str(error.get("msg", "invalid value"))
    return message.removeprefix("Value error, ")


def _body(error_type: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"type": error_type, "message": message, **extra}}


async def tokenfarm_error(request: Request, exc: Exception) -> JSONResponse:
    """A domain error -> its status and JSON error body."""
    assert isinstance(exc, TokenfarmError)
    headers = {}
    if isinstance(exc, MethodNotAllowed) and "allowed" in exc.extra:
        headers["Allow"] = ", ".join(exc.extra["allowed"])
    if exc.status_code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"error": exc.to_body()}, status_code=exc.status_code, headers=headers)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 naming where the input is wrong (`endpoints[0].action[2].then[0]: …`)."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"path": format_location(tuple(e.get("loc", ()))), "message": describe_error(e)}
        for e in exc.errors()
    ]
    first = errors[0] if errors else {"path": "", "message": "invalid request"}
    message = f"{first['path']}: {first['message']}" if first["path"] else first["message"]
    return JSONResponse(_body("validation_error", message, errors=errors), status_code=422)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    """Framework errors (unknown route, wrong method) in the same shape."""
    assert isinstance(exc, StarletteHTTPException)
    error_type = HTTP_ERROR_TYPES.get(exc.status_code, "http_error")
    message = str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route {request.url.path}; see /docs for the API"
    return JSONResponse(
        _body(error_type, message), status_code=exc.status_code, headers=getattr(exc, "headers", None)
    )


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """Anything unforeseen: logged by class name only, answered without details."""
    logger.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path)
    error = InternalError("an unexpected error occurred; see the server log")
    return JSONResponse({"error": error.to_body()}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """Register every handler on the app."""
    app.add_exception_handler(TokenfarmError, tokenfarm_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)
