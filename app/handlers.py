"""Turns every error into `{"error": {"type", "message", ...}}` with a fitting status.

`install_error_handlers` also documents that shape in the OpenAPI schema: FastAPI would otherwise
advertise its own `{"detail": [...]}` for 422, which this service never sends.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.errors import (
    DatabaseUnavailable,
    InternalError,
    InvalidInput,
    MethodNotAllowed,
    TokenfarmError,
    is_database_outage,
)
from app.logs import request_id_var
from app.middleware import REQUEST_ID_HEADER
from app.schemas import ErrorResponse, describe_error, format_location

logger = logging.getLogger("tokenfarm")

HTTP_ERROR_TYPES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
}
PROBED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
# FastAPI's detail for a body it can't decode at all (JSON that isn't UTF-8, a broken form).
UNPARSABLE_BODY = "There was an error parsing the body"


def _problem(error: dict[str, Any]) -> dict[str, str]:
    # A JSON syntax error's location is a character offset, not a place in the document.
    location = () if error["type"] == "json_invalid" else tuple(error.get("loc", ()))
    return {"path": format_location(location), "message": describe_error(error)}


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
    headers.update(retry_after(exc))
    body = exc.to_body()
    if isinstance(exc, InvalidInput) and "errors" not in body:
        # Every 422 lists its problems the same way, whether pydantic or a store found them.
        path = str(exc.extra.get("path", ""))
        message = exc.message.removeprefix(f"{path}: ") if path else exc.message
        body["errors"] = [{"path": path, "message": message}]
    return JSONResponse({"error": body}, status_code=exc.status_code, headers=headers)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 naming where the input is wrong (`endpoints[0].action[2].then[0]: …`)."""
    assert isinstance(exc, RequestValidationError)
    errors = [_problem(e) for e in exc.errors()]
    first = errors[0] if errors else {"path": "", "message": "invalid request"}
    message = f"{first['path']}: {first['message']}" if first["path"] else first["message"]
    return JSONResponse(_body("validation_error", message, errors=errors), status_code=422)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette's `Allow` names one route's)."""
    allowed = []
    for method in PROBED_METHODS:
        # A fresh scope: the request's own carries the routing state of its failed match.
        scope = {
            "type": "http",
            "method": method,
            "path": request.scope["path"],
            "root_path": request.scope.get("root_path", ""),
            "headers": [],
            "query_string": b"",
        }
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    """Framework errors (unknown route, wrong method) in the same shape."""
    assert isinstance(exc, StarletteHTTPException)
    error_type = HTTP_ERROR_TYPES.get(exc.status_code, "http_error")
    headers = dict(exc.headers or {})
    message = str(exc.detail)
    if exc.status_code == 400 and message == UNPARSABLE_BODY:
        # Malformed is malformed: the same 422 as JSON with a syntax error.
        problem = "the request body can't be parsed (JSON must be UTF-8 text)"
        body = _body("validation_error", problem, errors=[{"path": "", "message": problem}])
        return JSONResponse(body, status_code=422)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route {request.url.path}; see /docs for the API"
    elif exc.status_code == 405:
        allowed = ", ".join(allowed_methods(request))
        headers = {k: v for k, v in headers.items() if k.lower() != "allow"}
        if allowed:
            headers["Allow"] = allowed
        message = f"{request.url.path} does not accept {request.method}"
        message += f"; it accepts {allowed}" if allowed else ""
    return JSONResponse(_body(error_type, message), status_code=exc.status_code, headers=headers)


def database_unavailable() -> DatabaseUnavailable:
    """The one answer to a database outage, wherever it surfaces."""
    return DatabaseUnavailable(
        "the database is unavailable right now; try again shortly (nothing was changed by this "
        "request, and a rotated token that arrived meanwhile is kept: see docs/operations.md)"
    )


async def database_error(request: Request, exc: Exception) -> JSONResponse:
    """An outage of the database (refused or lost connections, too many connections, a server
    shutting down) -> 503 `database_unavailable` with Retry-After; any other database error is
    unexpected."""
    if is_database_outage(exc):
        logger.warning(
            "database unavailable on %s %s: %s",
            request.method,
            request.url.path,
            type(exc).__name__,
        )
        return await tokenfarm_error(request, database_unavailable())
    return await unexpected_error(request, exc)


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """Anything unforeseen: logged by class name only, answered without details."""
    if is_database_outage(exc):
        # Raised outside the routes (a middleware's session, the app's own fast paths).
        return await database_error(request, exc)
    logger.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path)
    error = InternalError("an unexpected error occurred; see the server log")
    # Answered by Starlette's outermost middleware, outside the request-id middleware: the id is
    # still set for this request (see app/middleware.py), so the answer names it too.
    request_id = request_id_var.get()
    headers = {REQUEST_ID_HEADER: request_id} if request_id else None
    return JSONResponse({"error": error.to_body()}, status_code=500, headers=headers)


def document_errors(app: FastAPI) -> None:
    """Make the OpenAPI schema describe the error shape the handlers above really send."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        definition = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(definition.pop("$defs", {}))
        components["ErrorResponse"] = definition
        error = {"$ref": "#/components/schemas/ErrorResponse"}
        content = {"application/json": {"schema": error}}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                for status, response in responses.items():
                    declared = response.get("content", {})
                    media = declared.get("application/json", {})
                    # A route that answers another type (the connect flow's HTML pages) says so.
                    other = any(kind != "application/json" for kind in declared)
                    if status[0] in "45" and (
                        status == "422" or not (media.get("schema") or other)
                    ):
                        response["content"] = content
                responses.setdefault("default", {"description": "An error", "content": content})
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    """Register every handler on the app and document the error shape in its schema."""
    app.add_exception_handler(TokenfarmError, tokenfarm_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    # Drivers' connection errors are not always wrapped by SQLAlchemy (a refused connect).
    for outage in (SQLAlchemyError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        app.add_exception_handler(outage, database_error)
    app.add_exception_handler(Exception, unexpected_error)
    document_errors(app)


def retry_after(error: TokenfarmError | None) -> dict[str, str]:
    """The `Retry-After` header of an error that asks to come back later (a 429 or 503 that
    knows how much later; not an upstream's own Retry-After, which a 502 only reports), whether
    it is raised or a run's failure answered as a result."""
    wait = getattr(error, "retry_after_seconds", None)
    if error is None or error.status_code not in (429, 503) or not isinstance(wait, int | float):
        return {}
    return {"Retry-After": str(math.ceil(wait))}
