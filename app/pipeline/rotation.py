"""Rotation safety: which requests spend a refresh token, and what becomes of a failure that may
have spent one.

Under refresh token rotation (RFC 9700 §4.14.2) each refresh token works once: the answer to a
refresh carries its successor. A refresh whose answer is lost (a 5xx after the server committed,
a timeout, a connection reset after the request was written) may have spent the token anyway,
and presenting it again makes a server with reuse detection revoke the whole grant. So
`web_request` retries such a request only after failures that provably never reached the server
(app/outbound.py `SendProgress`), unless its retry policy says the server has a reuse grace
period (`ambiguous_failures: retry`).
"""

from __future__ import annotations

import json
from typing import Any, Final
from urllib.parse import parse_qs

from app.errors import RunFailed, UpstreamAmbiguous

REFRESH_GRANT: Final = "refresh_token"
# The retry policy fragment for a provider whose entry declares a reuse grace period (the old
# refresh token keeps working for a while after rotation): merge it into the refresher's
# `web_request` `retry`, and ambiguous failures are retried as any transient failure is.
REUSE_GRACE_RETRY: Final[dict[str, str]] = {"ambiguous_failures": "retry"}

LOST_ANSWER = (
    "the request may have reached the token server, which may have rotated the refresh token "
    "in the answer that was lost"
)
WHAT_TO_DO = "reconnect the secret, or set a new refresh token by hand"
SPENT_BY_LOST_ANSWER = (
    "the refresh token was probably spent by an earlier attempt whose answer was lost"
)


def is_refresh_grant(
    *, form: dict[str, Any] | None, json_body: Any, raw: str | None, query: dict[str, Any]
) -> bool:
    """Whether a request, as it is sent (bindings resolved), is an OAuth `refresh_token` grant:
    `grant_type=refresh_token` in its form, JSON object, raw form-encoded or JSON body, or its
    query (some servers take the grant there)."""
    fields: list[Any] = [query.get("grant_type")]
    if form is not None:
        fields.append(form.get("grant_type"))
    if isinstance(json_body, dict):
        fields.append(json_body.get("grant_type"))
    if raw is not None:
        fields.extend(parse_qs(raw.strip()).get("grant_type", []))
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            fields.append(parsed.get("grant_type"))
    values = [v for field in fields for v in (field if isinstance(field, list) else [field])]
    return REFRESH_GRANT in values


def is_ambiguous(failure: RunFailed) -> bool:
    """A failure that a retry could help with, after a request that may have reached the
    server: whether the server acted on it is unknown (a 429 is a definite refusal)."""
    return failure.error_class == "transient" and failure.reached_upstream


def ambiguous_refresh(failure: RunFailed) -> UpstreamAmbiguous:
    """The error of a refresh that failed ambiguously and is not retried."""
    return UpstreamAmbiguous(
        failure,
        f"{failure.message}; {LOST_ANSWER}. Not retried: presenting the same refresh token "
        "again could make a server with reuse detection revoke the grant. If the next refresh "
        f"is refused with invalid_grant, {WHAT_TO_DO}",
    )
