"""`web_request`: one HTTP request through the shared outbound client, its JSON answer mapped
into variables, transient failures retried."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlencode, urlsplit, urlunsplit

from pydantic import Field, model_validator

from app.backoff import backoff_seconds, parse_retry_after
from app.errors import (
    ActionInvalid,
    BadUpstreamResponse,
    BindingError,
    RunFailed,
    UpstreamFailed,
    UpstreamTimeout,
)
from app.pipeline.bindings import BINDING, as_text
from app.pipeline.nodes.base import VARIABLE_NAME_PATTERN, Flow, NodeBase, Strict
from app.pipeline.rotation import (
    SPENT_BY_LOST_ANSWER,
    WHAT_TO_DO,
    ambiguous_refresh,
    is_ambiguous,
    is_refresh_grant,
)

if TYPE_CHECKING:
    from jsonpath_ng import JSONPath

    from app.pipeline.context import RunContext

logger = logging.getLogger("tokenfarm.run")
OAUTH_ERROR_LIMIT = 100
# Upstream text quoted in an error message (redacted first) is cut after this many characters.
EXCERPT_LIMIT = 200
# RFC 9110 §5.6.2 token: what an HTTP header name may be made of.
HEADER_NAME_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$"
HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")


class BasicAuth(Strict):
    """HTTP Basic authentication."""

    type: Literal["basic"]
    username: str
    password: str


class BearerAuth(Strict):
    """`Authorization: Bearer <token>`."""

    type: Literal["bearer"]
    token: str


class RequestBody(Strict):
    """Exactly one of `form`, `json` or `raw` (with `content_type`)."""

    form: dict[str, Any] | None = None
    json_: Any = Field(None, alias="json")
    raw: str | None = None
    content_type: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> RequestBody:
        given = [k for k in ("form", "json_", "raw") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("body needs exactly one of 'form', 'json' or 'raw'")
        if self.raw is None and self.content_type is not None:
            raise ValueError("'content_type' goes with a 'raw' body only")
        return self


class RetryPolicy(Strict):
    """How a `web_request` retries transient (5xx, 408, network, timeout) and rate-limited (429)
    failures: exponential backoff with jitter, honouring `Retry-After` up to `max_delay_seconds`.
    Permanent failures (other 4xx, OAuth errors such as `invalid_grant`) are never retried.

    A transient failure after the request may have reached the server is *ambiguous*: the
    server may have acted on it. A refresh_token grant is then not retried (app/pipeline/
    rotation.py) unless `ambiguous_failures` is `retry`."""

    attempts: int = Field(3, ge=1, le=10, description="Attempts in all; 1 turns retrying off.")
    base_delay_seconds: float = Field(
        0.5, ge=0, le=60, description="Delay before the first retry; doubles each retry."
    )
    max_delay_seconds: float = Field(
        30, ge=0, le=300, description="Cap on any one delay, Retry-After included."
    )
    ambiguous_failures: Literal["auto", "retry", "stop"] = Field(
        "auto",
        description=(
            "Transient failures after the request may have reached the server (5xx, a timeout "
            "or a lost connection after sending). `auto`: not retried for a refresh_token grant "
            "(the server may have rotated the refresh token; presenting it again could revoke "
            "the grant), retried for other requests. `retry`: always retried (the server has a "
            "reuse grace period). `stop`: never retried. Failures that provably never reached "
            "the server (a refused connection) are retried in every case."
        ),
    )


class WebRequestNode(NodeBase):
    """Calls an HTTP API and maps fields of its JSON answer into variables."""

    type: Literal["web_request"]
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    url: str = Field(min_length=1, max_length=2000)
    query: dict[str, Any] = Field(default_factory=dict)
    headers: dict[Annotated[str, Field(pattern=HEADER_NAME_PATTERN)], str] = Field(
        default_factory=dict
    )
    auth: Annotated[BasicAuth | BearerAuth, Field(discriminator="type")] | None = None
    body: RequestBody | None = None
    timeout_seconds: float | None = Field(None, gt=0, le=300)
    accept_statuses: list[Annotated[int, Field(ge=100, le=599)]] = Field(
        default_factory=list, description="Statuses besides 2xx that count as success."
    )
    result_mapping: dict[Annotated[str, Field(pattern=VARIABLE_NAME_PATTERN)], str] = Field(
        default_factory=dict, description="variable -> JSONPath into the response body"
    )
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    follow_redirects: bool = Field(
        False, description="Follow 3xx redirects (each hop passes the egress guard)."
    )

    def variables_set(self) -> Sequence[str]:
        """The variables of its result mapping."""
        return list(self.result_mapping)

    def flows(self) -> Sequence[Flow]:
        """The mapped variables come from the upstream's answer, whatever the request carried:
        an answer is not taken to echo what was sent (docs/action-language.md)."""
        return [
            Flow("variable", f".result_mapping.{name}", "{{ response.body }}", name)
            for name in self.result_mapping
        ]

    def check(self, path: str) -> None:
        """Every result mapping is a JSONPath, and the URL can be http(s)."""
        for variable, expression in self.result_mapping.items():
            try:
                compile_jsonpath(expression)
            except ValueError as exc:
                raise ActionInvalid(f"{path}.result_mapping.{variable}", str(exc)) from None
        if not _plausible_url(self.url):
            raise ActionInvalid(f"{path}.url", "must be an absolute http:// or https:// URL")

    async def run(self, ctx: RunContext, path: str, entry: dict[str, Any]) -> None:
        """Send the request, retrying as the policy says, and map the JSON answer."""
        # Imported here: it brings in httpx, which the command line doesn't need to read schemas.
        from app.outbound import describe_target

        url = as_text(ctx.render(self.url))
        # The trace shows the URL as written in the action: the rendered one may carry a secret.
        entry["request"] = f"{self.method} {self.url}"
        query = {
            k: [as_text(item) for item in v] if isinstance(v, list) else as_text(v)
            for k, v in ctx.render(self.query).items()
            if v is not None
        }
        headers = {k: as_text(ctx.render(v)) for k, v in self.headers.items()}
        auth: tuple[str, str] | None = None
        if self.auth is not None and self.auth.type == "basic":
            auth = (
                as_text(ctx.render(self.auth.username)),
                as_text(ctx.render(self.auth.password)),
            )
            ctx.redactor.add_basic_auth(*auth)
        elif self.auth is not None and self.auth.type == "bearer":
            token = as_text(ctx.render(self.auth.token))
            _set_header(headers, "Authorization", f"Bearer {token}", replace=True)
        data = json_body = content = None
        if self.body is not None and self.body.form is not None:
            rendered = ctx.render(self.body.form)
            data = {k: as_text(v) for k, v in rendered.items() if v is not None}
        elif self.body is not None and self.body.json_ is not None:
            json_body = ctx.render(self.body.json_)
        elif self.body is not None and self.body.raw is not None:
            content = as_text(ctx.render(self.body.raw))
            if self.body.content_type:
                _set_header(headers, "Content-Type", self.body.content_type, replace=False)
        _check_headers(headers)
        target = describe_target(self.method, url)
        full_url = _with_query(url, query)
        spends_refresh_token = is_refresh_grant(
            form=data, json_body=json_body, raw=content, query=query
        )
        retries: list[dict[str, Any]] = []
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await ctx.outbound.send(
                    self.method,
                    full_url,
                    headers=headers,
                    auth=auth,
                    data=data,
                    json=json_body,
                    content=content,
                    timeout_seconds=self._timeout(ctx),
                    follow_redirects=self.follow_redirects,
                    destination_check=ctx.check_destination,
                )
            except RunFailed as exc:
                failure: RunFailed = exc
            else:
                accepted = 200 <= response.status < 300 or response.status in self.accept_statuses
                if accepted and ctx.answer_sink is not None:
                    # Kept durably before anything reads it: it may carry a rotated token.
                    await ctx.answer_sink(response)
                ctx.response = response
                ctx.response_json = self._json_or_none(response.content)
                entry["status"] = response.status
                if accepted:
                    break
                failure = UpstreamFailed(
                    f"{target} answered {response.status}{self._oauth_detail(ctx)}",
                    upstream_status=response.status,
                    oauth_error=self._oauth_error(ctx),
                    retry_after_seconds=parse_retry_after(
                        response.headers.get("retry-after"), ctx.clock()
                    ),
                )
            if is_ambiguous(failure) and not self._retries_ambiguous(spends_refresh_token):
                if spends_refresh_token:
                    failure = ambiguous_refresh(failure)
                elif attempt < self.retry.attempts:
                    failure.message += (
                        " (not retried: it may have reached the server, and the retry "
                        "policy's ambiguous_failures is 'stop')"
                    )
                delay = None
            else:
                delay = self._retry_delay(ctx, failure, attempt)
            if delay is None:
                if retries:
                    entry["retries"] = retries
                    failure.extra["attempts"] = attempt
                    if any(r["reached_upstream"] for r in retries) and (
                        getattr(failure, "oauth_error", None) == "invalid_grant"
                    ):
                        # An earlier attempt may have reached the server and rotated the
                        # token; its answer was lost, so the retry presented a spent one.
                        failure.message += f" ({SPENT_BY_LOST_ANSWER}: {WHAT_TO_DO})"
                raise failure
            retries.append(
                {
                    "attempt": attempt,
                    "error": failure.error_type,
                    "error_class": failure.error_class,
                    "status": getattr(failure, "upstream_status", None),
                    "reached_upstream": failure.reached_upstream,
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
        if self.result_mapping:
            self._map_result(ctx, target, response.content_type)
            entry["mapped"] = sorted(self.result_mapping)

    def _timeout(self, ctx: RunContext) -> float | None:
        """The node's timeout, shortened so that no attempt runs past the run's deadline."""
        remaining = ctx.deadline - time.monotonic()
        if remaining <= 0:
            raise UpstreamTimeout("the run's deadline passed before the request could be sent")
        timeout = self.timeout_seconds or ctx.outbound.default_timeout_seconds
        return min(timeout, remaining)

    def _retries_ambiguous(self, spends_refresh_token: bool) -> bool:
        """Whether the policy retries a failure after which the server may have acted."""
        policy = self.retry.ambiguous_failures
        return policy == "retry" or (policy == "auto" and not spends_refresh_token)

    def _retry_delay(self, ctx: RunContext, failure: RunFailed, attempt: int) -> float | None:
        """Seconds to wait before the next attempt, or None when the failure is final."""
        policy = self.retry
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
        """`: invalid_grant ("description")` from an RFC 6749 §5.2 error body, when there is
        one: the upstream's words redacted, then capped and quoted (an upstream may echo what
        it was sent; cut first, half a secret would be left)."""
        body = ctx.response_json
        if not isinstance(body, dict) or not isinstance(body.get("error"), str):
            return ""
        detail = f": {ctx.redactor.text(body['error'])[:OAUTH_ERROR_LIMIT]}"
        description = body.get("error_description")
        if isinstance(description, str) and description:
            detail += f" ({quoted_excerpt(ctx.redactor.text(description))})"
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
        for name, expression in self.result_mapping.items():
            matches = compile_jsonpath(expression).find(body)
            value = matches[0].value if matches else None
            # Whatever comes back from a token endpoint may be a credential.
            ctx.redactor.add(value)
            ctx.variables[name] = value


@lru_cache(maxsize=1024)
def compile_jsonpath(expression: str) -> JSONPath:
    """A parsed JSONPath expression; raises ValueError with a readable message."""
    # Imported here: jsonpath-ng's parser is slow to import and only checks and runs need it.
    from jsonpath_ng.ext import parse as parse_jsonpath

    try:
        return parse_jsonpath(expression)
    except Exception as exc:  # the parser raises bare Exceptions besides its own error classes
        raise ValueError(
            f"{expression!r} is not a JSONPath expression ({type(exc).__name__})"
        ) from None


def quoted_excerpt(text: str, limit: int = EXCERPT_LIMIT) -> str:
    """Text an upstream sent, for an error message: at most `limit` characters, in quotes."""
    excerpt = text if len(text) <= limit else text[:limit] + "…"
    return json.dumps(excerpt, ensure_ascii=False)


def _plausible_url(url: str) -> bool:
    """Whether a URL can be http(s); one with bindings is checked again when it is rendered."""
    if BINDING.search(url):
        return url.lower().startswith(("http://", "https://", "{{"))
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


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
