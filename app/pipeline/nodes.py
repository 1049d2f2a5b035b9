"""Node runners: one class per node type, registered in `NODE_RUNNERS`, all sharing `NodeRunner`."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit, urlunsplit

from jsonpath_ng import JSONPath
from jsonpath_ng.ext import parse as parse_jsonpath

from app.backoff import backoff_seconds, parse_retry_after
from app.errors import (
    BadUpstreamResponse,
    BindingError,
    RunFailed,
    Thrown,
    UpstreamFailed,
    UpstreamTimeout,
)
from app.outbound import describe_target
from app.pipeline.bindings import as_text
from app.pipeline.conditions import evaluate, has_value
from app.pipeline.context import PendingWrite, RunContext
from app.pipeline.schemas import (
    EndExecutionNode,
    IfNode,
    LogNode,
    ThrowNode,
    TryNode,
    UpdateObjectNode,
    UpdateSecretNode,
    WebRequestNode,
)
from app.pipeline.signing import SignJwt

logger = logging.getLogger("tokenfarm.run")
OAUTH_DESCRIPTION_LIMIT = 300
LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")


class EndExecution(Exception):  # a control-flow signal, not an error
    """Raised by `end_execution` to stop the run successfully."""


class NodeRunner(Protocol):
    """What every node class implements: run one node, recording details into `entry`."""

    async def run(self, ctx: RunContext, path: str, entry: dict[str, Any]) -> None: ...


@lru_cache(maxsize=1024)
def compile_jsonpath(expression: str) -> JSONPath:
    """A parsed JSONPath expression; raises ValueError with a readable message."""
    try:
        return parse_jsonpath(expression)
    except Exception as exc:  # the parser raises bare Exceptions besides its own error classes
        raise ValueError(
            f"{expression!r} is not a JSONPath expression ({type(exc).__name__})"
        ) from None


def _as_seconds(value: Any, field: str) -> float:
    if isinstance(value, bool) or value is None:
        raise BindingError(f"'{field}' must be a number of seconds")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise BindingError(f"'{field}' must be a number of seconds") from None


def _from_epoch(seconds: float, field: str) -> datetime:
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        # Out of range or NaN: an upstream answered nonsense, so the run fails cleanly.
        raise BindingError(f"'{field}' is out of range for a point in time") from None


def parse_expiry(expires_in: Any, expires_at: Any, now: float) -> datetime | None:
    """The absolute expiry (UTC) from `expires_in` seconds or `expires_at` (ISO 8601 or epoch)."""
    if expires_in is not None:
        return _from_epoch(now + _as_seconds(expires_in, "expires_in"), "expires_in")
    if expires_at is None:
        return None
    if isinstance(expires_at, str) and not expires_at.replace(".", "", 1).isdigit():
        try:
            parsed = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
            return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        except (ValueError, OverflowError):
            raise BindingError("'expires_at' must be an ISO 8601 time or epoch seconds") from None
    return _from_epoch(_as_seconds(expires_at, "expires_at"), "expires_at")


def _with_query(url: str, query: dict[str, Any]) -> str:
    """The URL with `query` appended to the query string it already has."""
    # Handing the parameters to httpx instead would replace that query string (`?api-version=2`).
    if not query:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        raise BindingError("the URL is not valid") from None
    added = urlencode(query, doseq=True)
    return urlunsplit(parts._replace(query=f"{parts.query}&{added}" if parts.query else added))


def _set_header(headers: dict[str, str], name: str, value: str, *, replace: bool) -> None:
    """Set a header whatever the case the action wrote it in; `replace=False` keeps theirs."""
    existing = [key for key in headers if key.lower() == name.lower()]
    if existing and not replace:
        return
    for key in existing:
        del headers[key]
    headers[name] = value


def _check_headers(headers: dict[str, str]) -> None:
    """Header values must be visible ASCII: anything else would fail inside the HTTP client."""
    for name, value in headers.items():
        if not HEADER_VALUE.fullmatch(value):
            # The name only: the value may be a secret.
            raise BindingError(
                f"header {name!r}: the value must be ASCII text without control characters"
            )


class UpdateObject:
    """Sets service variables."""

    def __init__(self, node: UpdateObjectNode) -> None:
        self.node = node

    async def run(self, ctx: RunContext, path: str, entry: dict[str, Any]) -> None:
        for name, value in self.node.values.items():
            ctx.variables[name] = ctx.render(value)
        entry["variables"] = sorted(self.node.values)


class WebRequest:
    """Sends one HTTP request through the shared outbound client and maps its JSON answer."""

    def __init__(self, node: WebRequestNode) -> None:
        self.node = node

    async def run(self, ctx: RunContext, path: str, entry: dict[str, Any]) -> None:
        node = self.node
        url = as_text(ctx.render(node.url))
        # The trace shows the URL as written in the action: the rendered one may carry a secret.
        entry["request"] = f"{node.method} {node.url}"
        query = {
            k: [as_text(item) for item in v] if isinstance(v, list) else as_text(v)
            for k, v in ctx.render(node.query).items()
            if v is not None
        }
        headers = {k: as_text(ctx.render(v)) for k, v in node.headers.items()}
        auth: tuple[str, str] | None = None
        if node.auth is not None and node.auth.type == "basic":
            auth = (
                as_text(ctx.render(node.auth.username)),
                as_text(ctx.render(node.auth.password)),
            )
        elif node.auth is not None and node.auth.type == "bearer":
            token = as_text(ctx.render(node.auth.token))
            _set_header(headers, "Authorization", f"Bearer {token}", replace=True)
        data = json_body = content = None
        if node.body is not None and node.body.form is not None:
            rendered = ctx.render(node.body.form)
            data = {k: as_text(v) for k, v in rendered.items() if v is not None}
        elif node.body is not None and node.body.json_ is not None:
            json_body = ctx.render(node.body.json_)
        elif node.body is not None and node.body.raw is not None:
            content = as_text(ctx.render(node.body.raw))
            if node.body.content_type:
                _set_header(headers, "Content-Type", node.body.content_type, replace=False)
        _check_headers(headers)
        target = describe_target(node.method, url)
        full_url = _with_query(url, query)
        retries: list[dict[str, Any]] = []
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await ctx.outbound.send(
                    node.method,
                    full_url,
                    headers=headers,
                    auth=auth,
                    data=data,
                    json=json_body,
                    content=content,
                    timeout_seconds=self._timeout(ctx),
                    follow_redirects=node.follow_redirects,
                )
            except RunFailed as exc:
                failure: RunFailed = exc
            else:
                ctx.response = response
                ctx.response_json = self._json_or_none(response.content)
                entry["status"] = response.status
                if 200 <= response.status < 300 or response.status in node.accept_statuses:
                    break
                failure = UpstreamFailed(
                    f"{target} answered {response.status}{self._oauth_detail(ctx)}",
                    upstream_status=response.status,
                    oauth_error=self._oauth_error(ctx),
                    retry_after_seconds=parse_retry_after(
                        response.headers.get("retry-after"), ctx.clock()
                    ),
                )
            delay = self._retry_delay(ctx, failure, attempt)
            if delay is None:
                if retries:
                    entry["retries"] = retries
                    failure.extra["attempts"] = attempt
                    if any(r["error"] == "upstream_timeout" for r in retries) and (
                        getattr(failure, "oauth_error", None) == "invalid_grant"
                    ):
                        # The timed-out attempt may have reached the server and rotated the
                        # token; its answer was lost, so the retry presented a spent one.
                        failure.message += (
                            " (after an attempt that timed out: the server may have rotated "
                            "the token in the answer that was lost)"
                        )
                raise failure
            retries.append(
                {
                    "attempt": attempt,
                    "error": failure.error_type,
                    "error_class": failure.error_class,
                    "status": getattr(failure, "upstream_status", None),
                    "delay_seconds": round(delay, 3),
                }
            )
            logger.info(
                "run %s %s: %s (%s), retrying in %.2f s",
                ctx.run_id,
                path,
                failure.error_type,
                failure.error_class,
                delay,
            )
            await ctx.sleep(delay)
        if retries:
            entry["retries"] = retries
        if node.result_mapping:
            self._map_result(ctx, target, response.content_type)
            entry["mapped"] = sorted(node.result_mapping)

    def _timeout(self, ctx: RunContext) -> float | None:
        """The node's timeout, shortened so that no attempt runs past the run's deadline."""
        remaining = ctx.deadline - time.monotonic()
        if remaining <= 0:
            raise UpstreamTimeout("the run's deadline passed before the request could be sent")
        timeout = self.node.timeout_seconds or ctx.outbound.default_timeout_seconds
        return min(timeout, remaining)

    def _retry_delay(self, ctx: RunContext, failure: RunFailed, attempt: int) -> float | None:
        """Seconds to wait before the next attempt, or None when the failure is final."""
        policy = self.node.retry
        if failure.error_class == "permanent" or attempt >= policy.attempts:
            return None
        retry_after = getattr(failure, "retry_after_seconds", None)
        if retry_after is not None:
            if retry_after > policy.max_delay_seconds:
                failure.message += (
                    f" (it asked to retry after {retry_after:g} s, more than the retry "
                    f"policy's max_delay_seconds of {policy.max_delay_seconds:g})"
                )
                return None
            delay = retry_after
        else:
            # "Equal jitter": half the exponential ceiling fixed, half random.
            delay = backoff_seconds(
                attempt,
                base_seconds=policy.base_delay_seconds,
                max_seconds=policy.max_delay_seconds,
                fixed_share=0.5,
                random_share=0.5,
            )
        if time.monotonic() + delay >= ctx.deadline:
            failure.message += " (no time left in the run's deadline for another attempt)"
            return None
        return delay

    @staticmethod
    def _json_or_none(content: bytes) -> Any:
        if not content:
            return None
        try:
            return json.loads(content)
        except ValueError:
            return None

    @staticmethod
    def _oauth_error(ctx: RunContext) -> str | None:
        """The RFC 6749 §5.2 `error` code of the last answer, if it carries one."""
        body = ctx.response_json
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            return str(body["error"])[:100]
        return None

    @staticmethod
    def _oauth_detail(ctx: RunContext) -> str:
        """`: invalid_grant (description)` from an RFC 6749 §5.2 error body, when there is one."""
        body = ctx.response_json
        if not isinstance(body, dict) or not isinstance(body.get("error"), str):
            return ""
        detail = f": {body['error'][:100]}"
        description = body.get("error_description")
        if isinstance(description, str) and description:
            detail += f" ({description[:OAUTH_DESCRIPTION_LIMIT]})"
        return detail

    def _map_result(self, ctx: RunContext, target: str, content_type: str) -> None:
        body = ctx.response_json
        if not isinstance(body, (dict, list)):
            kind = content_type.split(";")[0].strip() or "no content type"
            status = ctx.response.status if ctx.response else "?"
            raise BadUpstreamResponse(
                f"{target} answered {status} with a body that is not a JSON object ({kind}); "
                "result_mapping needs JSON"
            )
        for name, expression in self.node.result_mapping.items():
            matches = compile_jsonpath(expression).find(body)
            value = matches[0].value if matches else None
            # Whatever comes back from a token endpoint may be a credential.
            ctx.redactor.add(value)
            ctx.variables[name] = value


class If:
    """Runs one branch."""

    def __init__(self, node: IfNode) -> None:
        self.node = node

    async def run(self, ctx: RunContext, path: str, entry: dict[str, Any]) -> None:
        holds = evaluate(self.node.condition, ctx.render)
        entry["branch"] = "then" if holds else "else"
        if holds:
            await run_block(self.node.then, ctx, f"{path}.then")
        else:
            await run_block(self.node.else_, ctx, f"{path}.else")


class UpdateSecret:
    """Queues a secret write; the runner commits every write together when the run succeeds."""

    def __init__(self, node: UpdateSecretNode) -> None:
        self.node = node

    async def run(self, ctx: RunContext, path: str, entry: dict[str, Any]) -> None:
        node = self.node
        entry["secret"] = node.secret
        value = ctx.render(node.value)
        if value is None:
            # A secret never holds null, not even with allow_empty: the store would refuse it
            # only after every other node had run.
            raise BindingError(
                f"update_secret {node.secret}: the value is null, so the stored one is kept"
            )
        if not node.allow_empty and not has_value(value):
            raise BindingError(
                f"update_secret {node.secret}: the value is empty, so the stored one is kept "
                "(set allow_empty: true to write empty values)"
            )
        expires_at = parse_expiry(
            ctx.render(node.expires_in), ctx.render(node.expires_at), ctx.clock()
        )
        ctx.redactor.add(value)
        ctx.secrets[node.secret] = value
        ctx.writes[node.secret] = PendingWrite(node.secret, value, expires_at)
        if expires_at is not None:
            entry["expires_at"] = expires_at.isoformat()


class Try:
    """Runs `do`, and `catch` on a listed kind of error."""

    def __init__(self, node: TryNode) -> None:
        self.node = node

    async def run(self, ctx: RunContext, path: str, entry: dict[str, Any]) -> None:
        try:
            await run_block(self.node.do, ctx, f"{path}.do")
        except RunFailed as exc:
            if self.node.errors is not None and exc.kind not in self.node.errors:
                raise
            entry["caught"] = exc.error_type
            outer, ctx.error = ctx.error, exc
            try:
                await run_block(self.node.catch, ctx, f"{path}.catch")
            finally:
                ctx.error = outer


class Throw:
    """Fails the run with the node's status and message."""

    def __init__(self, node: ThrowNode) -> None:
        self.node = node

    async def run(self, ctx: RunContext, path: str, entry: dict[str, Any]) -> None:
        raise Thrown(as_text(ctx.render(self.node.message)), status_code=self.node.status)


class End:
    """Stops the run successfully with an optional response."""

    def __init__(self, node: EndExecutionNode) -> None:
        self.node = node

    async def run(self, ctx: RunContext, path: str, entry: dict[str, Any]) -> None:
        ctx.result = ctx.render(self.node.response)
        raise EndExecution


class Log:
    """Adds a message to the run trace and to the server log, secret values redacted."""

    def __init__(self, node: LogNode) -> None:
        self.node = node

    async def run(self, ctx: RunContext, path: str, entry: dict[str, Any]) -> None:
        message = as_text(ctx.render(self.node.message))
        entry["level"] = self.node.level
        entry["message"] = message
        # The server log keeps it even when the run is not recorded (success without enable_log).
        redacted = ctx.redactor.text(message)
        logger.log(LOG_LEVELS[self.node.level], "run %s %s: %s", ctx.run_id, path, redacted)


NODE_RUNNERS: dict[str, type[Any]] = {
    "update_object": UpdateObject,
    "web_request": WebRequest,
    "if": If,
    "update_secret": UpdateSecret,
    "try": Try,
    "throw": Throw,
    "end_execution": End,
    "log": Log,
    "sign_jwt": SignJwt,
}


async def run_block(nodes: Sequence[Any], ctx: RunContext, path: str) -> None:
    """Run nodes in order, one trace entry each (appended when the node starts)."""
    for index, node in enumerate(nodes):
        node_path = f"{path}[{index}]"
        entry: dict[str, Any] = {"path": node_path, "type": node.type}
        if node.label:
            entry["label"] = node.label
        ctx.trace.append(entry)
        runner: NodeRunner = NODE_RUNNERS[node.type](node)
        started = time.perf_counter()
        try:
            await runner.run(ctx, node_path, entry)
        except RunFailed as exc:
            entry["outcome"] = "failed"
            entry.setdefault("error", {"type": exc.error_type, "message": exc.message})
            raise
        except EndExecution:
            entry["outcome"] = "ended"
            raise
        else:
            entry["outcome"] = "ok"
        finally:
            entry["duration_ms"] = round((time.perf_counter() - started) * 1000, 2)


async def execute(nodes: Sequence[Any], ctx: RunContext) -> None:
    """Walk a whole action; `end_execution` ends it early and successfully."""
    try:
        await run_block(nodes, ctx, "action")
    except EndExecution:
        return
