"""The run context: everything a node may touch, handed to it explicitly (no globals)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from app.pipeline.bindings import dig, render

if TYPE_CHECKING:
    # Names for the annotations only: node modules import this one, and the command line imports
    # the node schemas without needing the HTTP client.
    from app.auth.actor import Actor
    from app.errors import RunFailed
    from app.outbound import Outbound, OutboundResponse

REDACTED = "[REDACTED]"
MIN_REDACTED_LENGTH = 4


class Redactor:
    """Remembers every sensitive string of a run and blanks it out of anything shown."""

    def __init__(self) -> None:
        self._values: set[str] = set()

    def add(self, value: Any) -> None:
        """Treat a value (and every string inside it) as sensitive."""
        if isinstance(value, str):
            if len(value) >= MIN_REDACTED_LENGTH:
                self._values.add(value)
            # Bindings address into JSON-string secrets (`secrets.SA_KEY.private_key`), so the
            # fields inside are sensitive on their own.
            if value[:1] in ("{", "["):
                try:
                    parsed = json.loads(value)
                except ValueError:
                    return
                if isinstance(parsed, (dict, list)):
                    self.add(parsed)
        elif isinstance(value, dict):
            for item in value.values():
                self.add(item)
        elif isinstance(value, list):
            for item in value:
                self.add(item)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            # Numeric secrets (PINs, account numbers) are redacted when long enough to matter.
            if len(str(value)) >= 6:
                self._values.add(str(value))

    def text(self, text: str) -> str:
        """The text with every sensitive value replaced, longest first."""
        for value in sorted(self._values, key=len, reverse=True):
            if value in text:
                text = text.replace(value, REDACTED)
        return text

    def value(self, value: Any) -> Any:
        """A (nested) JSON value with every sensitive string replaced."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if is_number and str(value) in self._values:
            return REDACTED
        return value


@dataclass
class PendingWrite:
    """A secret write that takes effect only when the whole run succeeds."""

    secret: str
    value: Any
    expires_at: datetime | None


@dataclass
class RequestData:
    """The caller's request, as bindings see it (`request.query.X`, …)."""

    query: dict[str, Any] = field(default_factory=dict)
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class RunContext:
    """State of one run: variables, loaded secrets, the last response, pending writes, trace."""

    run_id: str
    actor: Actor
    outbound: Outbound
    variables: dict[str, Any]
    secrets: dict[str, Any]
    request: RequestData = field(default_factory=RequestData)
    clock: Callable[[], float] = time.time
    # The run's overall deadline on `time.monotonic()`; retries never start past it.
    deadline: float = field(default_factory=lambda: time.monotonic() + 120.0)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    response: OutboundResponse | None = None
    response_json: Any = None
    writes: dict[str, PendingWrite] = field(default_factory=dict)
    trace: list[dict[str, Any]] = field(default_factory=list)
    redactor: Redactor = field(default_factory=Redactor)
    error: RunFailed | None = None
    result: Any = None
    # Called by `web_request` with each accepted upstream answer before anything reads it, when
    # the run may write secrets (it may carry a rotated token): the runner keeps it durably.
    answer_sink: Callable[[OutboundResponse], Awaitable[None]] | None = None

    def resolve(self, segments: list[str]) -> Any:
        """The value of one split binding path."""
        root, rest = segments[0], segments[1:]
        if root == "now":
            return int(self.clock())
        if root == "vars":
            return dig(self.variables, rest)
        if root == "secrets":
            return dig(self.secrets, rest)
        if root == "run":
            return dig({"id": self.run_id}, rest)
        if root == "request":
            part = rest[0]
            if part == "headers":
                headers = {k.lower(): v for k, v in self.request.headers.items()}
                return dig(headers, [s.lower() for s in rest[1:2]])
            return dig(self.request.query if part == "query" else self.request.body, rest[1:])
        if root == "response":
            if self.response is None:
                return None
            part = rest[0]
            if part == "status":
                return self.response.status
            if part == "headers":
                return dig(self.response.headers, [s.lower() for s in rest[1:]])
            return dig(self.response_json, rest[1:])
        if root == "error":
            if self.error is None:
                return None
            caught = self.error
            info = {"type": caught.error_type, "kind": caught.kind, "message": caught.message}
            return dig(info, rest)
        return None

    def render(self, value: Any) -> Any:
        """Resolve every binding in a (nested) action value."""
        return render(value, self.resolve)
