"""How deliveries are signed: the Standard Webhooks scheme, and the headers of earlier versions.

Standard Webhooks (https://www.standardwebhooks.com): the headers `webhook-id` (the delivery's
id, the same on every retry), `webhook-timestamp` (unix seconds of the attempt) and
`webhook-signature`, a space-separated list of `v1,<base64 HMAC-SHA256>` over
`{id}.{timestamp}.{body}`: one per signing secret still valid (two during a rotation's grace
period). A signing secret is `whsec_` and the base64 of its key's bytes, so the standard's
libraries take it as it is: `Webhook(signing_secret).verify(body, headers)`.

A secret made before tokenfarm spoke the standard (no `whsec_` prefix) keys the HMAC with its own
text: receivers give the libraries `whsec_` + the base64 of that text (`standard_form`).

The `X-Tokenfarm-Signature` header of earlier versions (`v1=` and the hex HMAC-SHA256 over
`{timestamp}.{body}`, keyed with the secret's text, the newest secret only) is still sent, for this
release only, so receivers can move over: `sign` and `verify_signature`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping, Sequence

SECRET_PREFIX = "whsec_"  # noqa: S105 - the standard's prefix, not a secret
SECRET_BYTES = 32  # the standard asks for 24 to 64
STANDARD_VERSION = "v1"
LEGACY_VERSION = "v1"
DEFAULT_TOLERANCE_SECONDS = 300


def new_signing_secret() -> str:
    """A fresh signing secret: `whsec_` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def signing_key(signing_secret: str) -> bytes:
    """The HMAC key of a signing secret: what a `whsec_` secret encodes, an older one's text."""
    if signing_secret.startswith(SECRET_PREFIX):
        return base64.b64decode(signing_secret.removeprefix(SECRET_PREFIX))
    return signing_secret.encode()


def standard_form(signing_secret: str) -> str:
    """The `whsec_` form of a signing secret (an older secret's text, base64-encoded)."""
    if signing_secret.startswith(SECRET_PREFIX):
        return signing_secret
    return SECRET_PREFIX + base64.b64encode(signing_secret.encode()).decode()


def standard_signature(signing_secret: str, message_id: str, timestamp: int, body: str) -> str:
    """One signature of `webhook-signature`: `v1,` and the base64 HMAC-SHA256 of
    `{message_id}.{timestamp}.{body}`."""
    signed = f"{message_id}.{timestamp}.{body}".encode()
    digest = hmac.new(signing_key(signing_secret), signed, hashlib.sha256).digest()
    return f"{STANDARD_VERSION},{base64.b64encode(digest).decode()}"


def signature_header(
    signing_secrets: Sequence[str], message_id: str, timestamp: int, body: str
) -> str:
    """The `webhook-signature` value: a signature per secret, space-separated, newest first."""
    return " ".join(standard_signature(s, message_id, timestamp, body) for s in signing_secrets)


def standard_headers(
    signing_secrets: Sequence[str], message_id: str, timestamp: int, body: str
) -> dict[str, str]:
    """`webhook-id`, `webhook-timestamp` and `webhook-signature` of one attempt."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(signing_secrets, message_id, timestamp, body),
    }


def _recent(timestamp: str, tolerance_seconds: float, now: float | None) -> int | None:
    """The timestamp as an int when it is within `tolerance_seconds` of now, else None."""
    try:
        sent_at = int(timestamp)
    except ValueError:
        return None
    current = time.time() if now is None else now
    return sent_at if abs(current - sent_at) <= tolerance_seconds else None


def verify_delivery(
    signing_secret: str,
    body: str | bytes,
    headers: Mapping[str, str],
    *,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """Whether a delivery is genuine by the standard: one of its `v1` signatures matches
    (compared in constant time) and `webhook-timestamp` is within `tolerance_seconds` of now."""
    given = {name.lower(): value for name, value in headers.items()}
    message_id = given.get("webhook-id", "")
    signatures = given.get("webhook-signature", "")
    sent_at = _recent(given.get("webhook-timestamp", ""), tolerance_seconds, now)
    if not message_id or not signatures or sent_at is None:
        return False
    try:
        text = body.decode() if isinstance(body, bytes) else body
        expected = standard_signature(signing_secret, message_id, sent_at, text)
    except (UnicodeDecodeError, binascii.Error, ValueError):
        return False
    found = False
    for signature in signatures.split(" "):
        # Every candidate is compared, so the time taken doesn't say which one matched.
        found |= hmac.compare_digest(expected.encode(), signature.encode())
    return found


def sign(signing_secret: str, timestamp: int, body: str) -> str:
    """The deprecated `X-Tokenfarm-Signature`: `v1=` and the hex HMAC-SHA256 of
    `{timestamp}.{body}`, keyed with the secret's text."""
    digest = hmac.new(
        signing_secret.encode(), f"{timestamp}.{body}".encode(), hashlib.sha256
    ).hexdigest()
    return f"{LEGACY_VERSION}={digest}"


def legacy_headers(
    signing_secret: str, delivery_id: str, timestamp: int, body: str
) -> dict[str, str]:
    """The deprecated `X-Tokenfarm-Delivery`, `-Timestamp` and `-Signature` headers (this
    release only)."""
    return {
        "X-Tokenfarm-Delivery": delivery_id,
        "X-Tokenfarm-Timestamp": str(timestamp),
        "X-Tokenfarm-Signature": sign(signing_secret, timestamp, body),
    }


def verify_signature(
    signing_secret: str,
    timestamp: str,
    body: str | bytes,
    signature: str,
    *,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """Whether a delivery's deprecated `X-Tokenfarm-Signature` is genuine: it matches (in
    constant time) and the timestamp is within `tolerance_seconds` of now."""
    sent_at = _recent(timestamp, tolerance_seconds, now)
    if sent_at is None:
        return False
    try:
        text = body.decode() if isinstance(body, bytes) else body
    except UnicodeDecodeError:
        return False
    return hmac.compare_digest(sign(signing_secret, sent_at, text), signature)
