"""Logging set-up: JSON lines (or text for people) carrying the request id, and the libraries that
would print URLs (and so secrets) quieted.

Nothing here redacts: tokenfarm never hands a value to a logger in the first place (messages name
secrets, runs and error types; exceptions are logged by type). Query strings are never logged —
an endpoint's `request.query.*` bindings may carry what a caller must keep to itself — which is
why uvicorn's access log is replaced by `tokenfarm.access` (see `app/middleware.py`).
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["json", "text"]

request_id_var: ContextVar[str | None] = ContextVar("tokenfarm_request_id", default=None)
"""The id of the request being served (set by the request-id middleware)."""

# Attributes a caller may pass with `extra=` that become fields of a JSON line.
EXTRA_FIELDS = ("run_id", "method", "path", "status", "duration_ms", "client")
# uvicorn's own loggers; they get our handler instead of theirs.
SERVER_LOGGERS = ("uvicorn", "uvicorn.error")
ACCESS_LOGGER = "uvicorn.access"


def _timestamp(created: float) -> str:
    """`2025-01-31T12:00:00.123Z`."""
    moment = datetime.fromtimestamp(created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, run_id, exception."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a single line of JSON (newlines inside strings are escaped)."""
        entry: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            entry["request_id"] = request_id
        for name in EXTRA_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger [request id]: message`, for people at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(request)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The record as text, with the request id in brackets while serving a request."""
        request_id = request_id_var.get()
        record.request = f" [{request_id}]" if request_id else ""
        return super().format(record)


def formatter_for(log_format: LogFormat) -> logging.Formatter:
    """The formatter of a format."""
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure_logging(level: str = "INFO", log_format: LogFormat = "text") -> None:
    """Configure the root logger's one handler; calling it again switches level and format.

    httpx logs full URLs, whose query may carry a secret; uvicorn's access log prints query
    strings. uvicorn configures its loggers when it starts serving, after the app was made, so
    the lifespan calls this again.
    """
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_tokenfarm", False)), None)
    if handler is None:
        handler = logging.StreamHandler()
        handler._tokenfarm = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    handler.setFormatter(formatter_for(log_format))
    root.setLevel(level.upper())
    logging.getLogger("tokenfarm").setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "aiosqlite"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for name in SERVER_LOGGERS:
        server = logging.getLogger(name)
        server.handlers.clear()
        server.propagate = True
    access = logging.getLogger(ACCESS_LOGGER)
    access.handlers.clear()
    access.propagate = True
    access.setLevel(logging.WARNING)  # it logs every request at INFO, with its query string
