"""How `POST /auth/token` answers an OAuth client: RFC 6749 §5.2 error bodies.

The token endpoint is what OAuth clients (Swagger UI's Authorize box, `oauth2` libraries) talk
to, and they read `{"error", "error_description"}`, not our `{"error": {"type", "message"}}`;
every other route keeps our shape. docs/permissions.md ("Logging in") lists the answers:

| case | status | `error` |
| --- | --- | --- |
| wrong email or password, disabled account | 400 | `invalid_grant` |
| `username` or `password` missing | 400 | `invalid_request` |
| a `grant_type` other than `password` | 400 | `unsupported_grant_type` |
| throttled after failed logins | 429, `Retry-After` | `temporarily_unavailable` |
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel

OAuthErrorCode = Literal[
    "invalid_request", "invalid_grant", "unsupported_grant_type", "temporarily_unavailable"
]
# RFC 6749 §5.1: token responses, errors included, are never cached.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(BaseModel):
    """An RFC 6749 §5.2 error response of the token endpoint."""

    error: OAuthErrorCode
    error_description: str


def oauth_error(
    status_code: int, error: OAuthErrorCode, description: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The token endpoint's answer to a request it refuses."""
    body = OAuthError(error=error, error_description=description)
    return JSONResponse(
        body.model_dump(), status_code=status_code, headers={**NO_STORE, **(headers or {})}
    )


def oauth_error_responses() -> dict[int | str, dict[str, Any]]:
    """The OpenAPI description of those answers."""
    return {
        400: {
            "model": OAuthError,
            "description": "`invalid_grant`: wrong email or password (or a disabled account); "
            "`invalid_request`: `username` or `password` missing; `unsupported_grant_type`: "
            "`grant_type` is not `password`",
        },
        429: {
            "model": OAuthError,
            "description": "`temporarily_unavailable`: too many failed logins from this address "
            "or for this account; try again after `Retry-After` seconds",
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        },
    }
