"""Authorization server metadata: OpenID Connect discovery, then RFC 8414, through the egress guard.

The document is fetched from `{issuer}/.well-known/openid-configuration` (OpenID Connect
Discovery 1.0 §4) and, when that fails, from `{origin}/.well-known/oauth-authorization-server
{path}` (RFC 8414 §3.1). Its `issuer` must equal the configured one exactly (RFC 8414 §3.3,
OIDC Discovery §4.3): a document that names another issuer is refused, never used. Documents
are cached per process for `DISCOVERY_TTL_SECONDS`; a failed fetch is not cached, so the next
use tries again, and a caller whose endpoint failed may `forget` the issuer to re-fetch at once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from pydantic import TypeAdapter, ValidationError

from app.errors import DiscoveryFailed, RunFailed
from app.outbound import Outbound
from app.presets.catalog import TokenUrl

DISCOVERY_TTL_SECONDS = 3600.0
DISCOVERY_TIMEOUT_SECONDS = 10.0
__all__ = ["DiscoveryCache", "DiscoveryFailed", "discovery_cache", "discovery_urls"]
ENDPOINT_KEYS = (
    "authorization_endpoint",
    "token_endpoint",
    "revocation_endpoint",
    "device_authorization_endpoint",
    "jwks_uri",
)
_ENDPOINT = TypeAdapter(TokenUrl)


def discovery_urls(issuer: str) -> tuple[str, str]:
    """The OpenID Connect URL and the RFC 8414 URL of an issuer's metadata."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    oidc = f"{issuer.rstrip('/')}/.well-known/openid-configuration"
    rfc8414 = f"{parts.scheme}://{parts.netloc}/.well-known/oauth-authorization-server{path}"
    return oidc, rfc8414


class _Unusable(Exception):
    """This URL gave no usable document (the other one may)."""


class DiscoveryCache:
    """Each issuer's metadata, fetched once per TTL; failures are never cached."""

    def __init__(
        self,
        ttl_seconds: float = DISCOVERY_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._documents: dict[str, tuple[float, dict[str, Any]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def cached(self, issuer: str) -> dict[str, Any] | None:
        """The issuer's document while it is fresh, else None."""
        kept = self._documents.get(issuer)
        if kept is None or self._clock() - kept[0] >= self.ttl_seconds:
            return None
        return kept[1]

    def forget(self, issuer: str) -> None:
        """Drop the issuer's document (an endpoint it named failed): the next use re-fetches."""
        self._documents.pop(issuer, None)

    async def document(self, issuer: str, outbound: Outbound) -> dict[str, Any]:
        """The issuer's metadata (cached or fetched now), or `DiscoveryFailed` saying why."""
        found = self.cached(issuer)
        if found is not None:
            return found
        # One fetch at a time per issuer: callers that arrive meanwhile use its answer.
        lock = self._locks.setdefault(issuer, asyncio.Lock())
        async with lock:
            found = self.cached(issuer)
            if found is None:
                found = await fetch_metadata(issuer, outbound)
                self._documents[issuer] = (self._clock(), found)
        return found


async def fetch_metadata(issuer: str, outbound: Outbound) -> dict[str, Any]:
    """Fetch and check the issuer's metadata (OpenID Connect first, then RFC 8414)."""
    reasons = []
    for url in discovery_urls(issuer):
        try:
            return await _fetch(issuer, url, outbound)
        except _Unusable as exc:
            reasons.append(f"{url}: {exc}")
    raise DiscoveryFailed(
        f"no usable discovery document for issuer {issuer}: {'; '.join(reasons)}; check the "
        "issuer, or give the provider's endpoints explicitly",
        issuer=issuer,
    )


async def _fetch(issuer: str, url: str, outbound: Outbound) -> dict[str, Any]:
    """One URL's document, checked; `_Unusable` for what the other URL may do better,
    `DiscoveryFailed` for a document that names another issuer."""
    try:
        response = await outbound.send(
            "GET",
            url,
            headers={"Accept": "application/json"},
            timeout_seconds=min(outbound.default_timeout_seconds, DISCOVERY_TIMEOUT_SECONDS),
        )
    except RunFailed as exc:
        raise _Unusable(exc.message) from None
    if response.status != 200:
        raise _Unusable(f"answered HTTP {response.status}")
    try:
        document = json.loads(response.content)
    except ValueError:
        raise _Unusable("the answer is not JSON") from None
    if not isinstance(document, dict):
        raise _Unusable("the answer is not a JSON object")
    named = document.get("issuer")
    if named != issuer:
        # RFC 8414 §3.3: a different issuer means the document must not be used (it may be an
        # attacker's, or another tenant's); refused outright, not tried elsewhere.
        shown = named if isinstance(named, str) else repr(named)
        raise DiscoveryFailed(
            f"the discovery document at {url} names issuer {shown[:300]}, not the configured "
            f"issuer {issuer}; they must match exactly (RFC 8414 §3.3): fix the provider's "
            "issuer (a trailing '/' counts)",
            issuer=issuer,
            document_issuer=named if isinstance(named, str) else None,
        )
    for key in ENDPOINT_KEYS:
        value = document.get(key)
        if value is None:
            continue
        try:
            _ENDPOINT.validate_python(value)
        except ValidationError:
            raise DiscoveryFailed(
                f"the discovery document at {url} has a {key} that is not an absolute http(s) URL",
                issuer=issuer,
            ) from None
    return document


# The process's cache: every resolve of every request shares it.
discovery_cache = DiscoveryCache()
