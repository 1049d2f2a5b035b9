"""The run context: everything a node may touch, handed to it explicitly (no globals)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from app.pipeline.bindings import dig, render
from app.pipeline.wire import (
    MIN_SENSITIVE_LENGTH,
    basic_credentials,
    check_destination,
    sensitive_strings,
    wire_forms,
)

if TYPE_CHECKING:
    # Names for the annotations only: node modules import this one, and the command line imports
    # the node schemas without needing the HTTP client.
    from app.auth.actor import Actor
    from app.errors import RunFailed
    from app.outbound import Outbound, OutboundResponse

REDACTED = "[REDACTED]"


class Redactor:
    """Remembers every sensitive string of a run, in every form it takes on the wire
    (app/pipeline/wire.py), and blanks each out of anything shown."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._ordered: list[str] | None = None  # longest first, sorted when first needed

    def add(self, value: Any) -> None:
        """Treat a value (and every string inside it) as sensitive, in each of its wire forms."""
        for text in sensitive_strings(value):
            self._remember(wire_forms(text))

    def add_basic_auth(self, username: str, password: str) -> None:
        """Treat the basic-auth credentials built from a pair as sensitive: the base64 of
        `id:secret` contains neither value's own base64."""
        if len(username) + len(password) >= MIN_SENSITIVE_LENGTH:
            credentials = basic_credentials(username, password)
            self._remember({credentials, credentials.rstrip("=")})

    def _remember(self, forms: set[str]) -> None:
        new = {form for form in forms if len(form) >= MIN_SENSITIVE_LENGTH} - self._values
        if new:
            self._values |= new
            self._ordered = None

    def text(self, text: str) -> str:
        """The text with every sensitive value replaced, longest first."""
        if self._ordered is None:
            self._ordered = sorted(self._values, key=len, reverse=True)
        for value in self._ordered:
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
    # The origins each secret that declares `allowed_destinations` may be sent to.
    allowed_destinations: dict[str, tuple[str, ...]] = field(default_factory=dict)
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

    def check_destination(self, destination: str, texts: Sequence[str]) -> None:
        """Refuse a request to `destination` (an origin) that would carry a secret elsewhere
        than its allowed destinations; `texts` are the request's URL, header values and body."""
        check_destination(self.secrets, self.allowed_destinations, destination, texts)
