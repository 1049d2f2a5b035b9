"""The domain error tree; one handler in `app.main` turns each into the JSON error shape.

Every error carries an HTTP status and a stable `type`. Messages never contain secret values:
they are written for an operator and may end up in logs, run traces and responses.
"""

from __future__ import annotations

import math
from typing import Any


class TokenfarmError(Exception):
    """Base of every error that the API reports as `{"error": {"type", "message", ...}}`."""

    status_code = 400
    error_type = "bad_request"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def to_body(self) -> dict[str, Any]:
        """The `error` object of the response body."""
        return {"type": self.error_type, "message": self.message, **self.extra}


class ConfigurationError(TokenfarmError):
    """The service is not configured well enough to start."""

    status_code = 500
    error_type = "configuration_error"


class NotFound(TokenfarmError):
    """A named thing does not exist."""

    status_code = 404
    error_type = "not_found"


class AlreadyExists(TokenfarmError):
    """A create named something that already exists."""

    status_code = 409
    error_type = "already_exists"


class Conflict(TokenfarmError):
    """The request can't be carried out in the current state."""

    status_code = 409
    error_type = "conflict"


class InvalidInput(TokenfarmError):
    """The request is well-formed JSON but says something that can't be done."""

    status_code = 422
    error_type = "validation_error"


class ActionInvalid(InvalidInput):
    """An action names an unknown node, secret or variable; `path` points at the node."""

    error_type = "invalid_action"

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem, path=path)


class PermissionDenied(TokenfarmError):
    """The actor lacks a permission."""

    status_code = 403
    error_type = "permission_denied"


class NotAuthenticated(TokenfarmError):
    """No valid credential came with the request."""

    status_code = 401
    error_type = "not_authenticated"


class SecretLocked(Conflict):
    """A run tried to write a locked secret."""

    error_type = "secret_locked"


class SecretNotEnvironmentSpecific(Conflict):
    """A run tried to write a secret that holds one value for all environments."""

    error_type = "secret_not_environment_specific"


class VersionConflict(Conflict):
    """A compare-and-set write found that the secret changed since it was read."""

    error_type = "version_conflict"


ErrorClass = str  # "permanent", "transient" or "rate_limited"


class RunFailed(TokenfarmError):
    """Base of the errors that end a run; `kind` is what a `try` node can catch.

    `error_class` says whether trying again could help: `transient` (5xx, 408, network,
    timeout) and `rate_limited` (429) failures are retried by `web_request`; `permanent` ones
    (OAuth errors such as `invalid_grant`, other 4xx, bad answers, bad bindings) never are.
    """

    status_code = 502
    error_type = "run_failed"
    kind = "run_failed"
    error_class: ErrorClass = "permanent"
    # Whether the request may have reached the upstream (its bytes were at least partly
    # written): a rotation-sensitive request is retried only when it provably did not.
    reached_upstream = False

    def to_body(self) -> dict[str, Any]:
        """The `error` object, with the error class."""
        return {**super().to_body(), "error_class": self.error_class}


class UpstreamFailed(RunFailed):
    """The upstream answered with a status that counts as failure."""

    status_code = 502
    error_type = "upstream_error"
    kind = "upstream_error"
    reached_upstream = True

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int,
        oauth_error: str | None = None,
        retry_after_seconds: float | None = None,
        **extra: Any,
    ) -> None:
        if oauth_error is not None:
            extra["oauth_error"] = oauth_error
        super().__init__(message, upstream_status=upstream_status, **extra)
        self.upstream_status = upstream_status
        self.oauth_error = oauth_error
        self.retry_after_seconds = retry_after_seconds
        self.error_class = classify_status(upstream_status, oauth_error)


class UpstreamTimeout(RunFailed):
    """The upstream did not answer within the node's timeout."""

    status_code = 504
    error_type = "upstream_timeout"
    kind = "timeout"
    error_class = "transient"
    # Unless the outbound door knows better (app/outbound.py), a timeout may come after sending.
    reached_upstream = True


class UpstreamUnreachable(RunFailed):
    """The connection to the upstream failed."""

    status_code = 502
    error_type = "upstream_unreachable"
    kind = "network"
    error_class = "transient"
    # A connection reset after the request was written is one too; app/outbound.py says when
    # the request provably never left (refused connection, failed name or TLS handshake).
    reached_upstream = True


class EgressRefused(RunFailed):
    """The egress guard refused a destination (a private address, a bad scheme, a redirect)."""

    status_code = 502
    error_type = "egress_refused"
    kind = "network"


class DestinationNotAllowed(RunFailed):
    """A request would carry a secret to an origin outside its `allowed_destinations`; nothing
    was sent. Not catchable by `try`: no action may route around it."""

    status_code = 403
    error_type = "destination_not_allowed"
    kind = "destination_not_allowed"


class BadUpstreamResponse(RunFailed):
    """The upstream answered 2xx, but the body can't be read as the action expects."""

    status_code = 502
    error_type = "bad_upstream_response"
    kind = "bad_response"
    reached_upstream = True


class UpstreamAmbiguous(RunFailed):
    """A rotation-sensitive request (a `refresh_token` grant) failed after it may have reached
    the upstream (5xx, timeout, connection lost after sending), and was not retried: the server
    may have rotated the refresh token in the answer that was lost, and presenting the old one
    again makes a server with reuse detection revoke the grant (RFC 9700 §4.14.2).

    It keeps the status, kind and error class of the failure it stands for (a `try` node
    catches it as that kind); only its type and message say more.
    """

    error_type = "upstream_ambiguous"
    reached_upstream = True

    def __init__(self, cause: RunFailed, message: str) -> None:
        super().__init__(message, **cause.extra)
        self.status_code = cause.status_code
        self.kind = cause.kind
        self.error_class = cause.error_class
        self.upstream_status: int | None = getattr(cause, "upstream_status", None)
        self.__cause__ = cause


class BindingError(RunFailed):
    """A value in the action could not be built (a type mismatch, an empty value to write)."""

    status_code = 422
    error_type = "binding_error"
    kind = "binding"


class Thrown(RunFailed):
    """A `throw` node ended the run with its own status and message."""

    error_type = "thrown"
    kind = "thrown"

    def __init__(self, message: str, status_code: int, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.status_code = status_code


# RFC 6749 §5.2: errors that say the grant or the client itself is wrong; retrying can't help.
PERMANENT_OAUTH_ERRORS = frozenset(
    {
        "invalid_grant",
        "invalid_client",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "invalid_request",
    }
)


def classify_status(status: int, oauth_error: str | None = None) -> ErrorClass:
    """The error class of an upstream answer that counts as failure."""
    if oauth_error in PERMANENT_OAUTH_ERRORS:
        return "permanent"
    if status == 429:
        return "rate_limited"
    if status >= 500 or status == 408:
        return "transient"
    return "permanent"


CATCHABLE_KINDS = ("upstream_error", "timeout", "network", "bad_response", "binding", "thrown")


class NeedsReauth(Conflict):
    """A secret's grant was refused (`invalid_grant`); runs wait until a person sets a value."""

    error_type = "needs_reauth"


class Superseded(Conflict):
    """The run lost a race: a secret it read changed while it was in flight."""

    error_type = "superseded"


class MethodNotAllowed(TokenfarmError):
    """The endpoint does not accept this HTTP method."""

    status_code = 405
    error_type = "method_not_allowed"


class InternalError(TokenfarmError):
    """Something unexpected; details are in the server log (without values), never in the answer."""

    status_code = 500
    error_type = "internal_error"


class TryLater(TokenfarmError):
    """Refused for now: the answer carries `Retry-After` (whole seconds, at least 1)."""

    def __init__(self, message: str, *, retry_after_seconds: float, **extra: Any) -> None:
        seconds = max(1, math.ceil(retry_after_seconds))
        super().__init__(message, retry_after_seconds=seconds, **extra)
        self.retry_after_seconds = seconds


class TooManyAttempts(TryLater):
    """Too many failed logins (from an address, or against an account): wait, then try again."""

    status_code = 429
    error_type = "too_many_attempts"


class RateLimited(TryLater):
    """A caller (credential or client address) used up a route's rate limit."""

    status_code = 429
    error_type = "rate_limited"


class RefreshBackingOff(TryLater):
    """A secret's refreshes keep failing: on-demand refreshes wait out its backoff window."""

    status_code = 503
    error_type = "refresh_backoff"


class StorageFailed(TokenfarmError):
    """The database could not store the outcome of a run."""

    status_code = 503
    error_type = "storage_error"


class DatabaseUnavailable(TokenfarmError):
    """The database can't be reached right now (down, restarting, out of connections): the
    caller should try again shortly; nothing was lost (see docs/operations.md)."""

    status_code = 503
    error_type = "database_unavailable"
    retry_after_seconds = 5


# asyncpg's errors that mean the server is gone or refuses sessions, not a bad statement:
# class 08 (connection exceptions), 53300 too_many_connections, 57P01-57P03 (shutting down,
# starting up), and its own "connection is closed" interface errors.
_ASYNCPG_OUTAGES = frozenset(
    {
        "PostgresConnectionError",
        "ConnectionDoesNotExistError",
        "ConnectionFailureError",
        "ClientCannotConnectError",
        "TooManyConnectionsError",
        "AdminShutdownError",
        "CrashShutdownError",
        "CannotConnectNowError",
        "InterfaceError",
        "InternalClientError",
        "ConnectionRejectionError",
    }
)


def is_database_failure(exc: BaseException) -> bool:
    """Whether an exception came from the database: an outage, or any SQLAlchemy error (what
    the storing paths catch, and leave every other exception to propagate)."""
    from sqlalchemy.exc import SQLAlchemyError

    return isinstance(exc, SQLAlchemyError) or is_database_outage(exc)


def is_database_outage(exc: BaseException) -> bool:
    """Whether an exception (or one it was raised from) means the database is unreachable,
    rather than that a statement was wrong: the one test behind every `database_unavailable`."""
    import socket

    from sqlalchemy import exc as sa_exc

    seen: BaseException | None = exc
    for _ in range(6):  # the chain a driver, SQLAlchemy and our code build is short
        if seen is None:
            return False
        if isinstance(
            seen,
            sa_exc.OperationalError
            | sa_exc.InterfaceError
            | sa_exc.DisconnectionError
            | sa_exc.TimeoutError,
        ):
            return True
        if isinstance(seen, sa_exc.DBAPIError) and seen.connection_invalidated:
            return True
        # A refused connect is not wrapped by SQLAlchemy (it is no DBAPI error); asyncio raises
        # a plain OSError when every address of a host name refused.
        if isinstance(seen, ConnectionError | socket.gaierror) or type(seen) is OSError:
            return True
        if type(seen).__module__.startswith("asyncpg") and any(
            cls.__name__ in _ASYNCPG_OUTAGES for cls in type(seen).__mro__
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class AnswerPending(TokenfarmError):
    """A refresh would present a refresh token that an answer kept but not yet written replaced
    (app/runs/spool.py): refused until that answer is written."""

    status_code = 503
    error_type = "answer_pending"
    retry_after_seconds = 5


class DiscoveryFailed(TokenfarmError):
    """A provider's issuer metadata could not be fetched, or names another issuer
    (app/providers/discovery.py)."""

    status_code = 502
    error_type = "discovery_failed"
