"""Verifying an ID token (OpenID Connect Core §3.1.3.7) before anything in it is believed.

Signature against the provider's JWKS (fetched through the egress guard), `iss` equal to the
provider's issuer, `aud` holding our client id, `exp` in the future, `nonce` equal to the one
this flow sent, and `at_hash` when present. Only then are `sub` and `email` recorded as who
connected. A provider without an issuer or a JWKS URI can't be verified: its ID token is
ignored (nothing from it is recorded), the tokens themselves are still stored.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from jose import jwt
from jose.exceptions import JOSEError

from app.errors import BadUpstreamResponse
from app.outbound import Outbound, describe_target
from app.providers.resolve import ResolvedProvider

logger = logging.getLogger("tokenfarm.connect")
ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]
KEPT_CLAIMS = ("sub", "email", "email_verified", "name", "iss")


class IdTokenInvalid(BadUpstreamResponse):
    """The provider's ID token failed verification; nothing of the connect is stored."""

    error_type = "id_token_invalid"


async def _jwks(outbound: Outbound, url: str) -> dict[str, Any]:
    response = await outbound.send("GET", url, headers={"Accept": "application/json"})
    target = describe_target("GET", url)
    try:
        keys = json.loads(response.content)
    except ValueError:
        keys = None
    if response.status != 200 or not isinstance(keys, dict) or "keys" not in keys:
        raise IdTokenInvalid(f"{target}: no JSON Web Key Set (status {response.status})")
    return keys


async def verify_id_token(
    outbound: Outbound,
    provider: ResolvedProvider,
    *,
    id_token: str,
    client_id: str,
    nonce: str,
    access_token: str,
) -> dict[str, Any] | None:
    """The verified claims worth keeping (sub, email, ...), None when the provider can't be
    verified against (no issuer or JWKS URI); IdTokenInvalid when verification fails."""
    if provider.issuer is None or provider.jwks_uri is None:
        logger.info(
            "connect: provider %s has no issuer or jwks_uri; its ID token is ignored",
            provider.name,
        )
        return None
    keys = await _jwks(outbound, provider.jwks_uri)
    try:
        claims = jwt.decode(
            id_token,
            keys,
            algorithms=ALGORITHMS,
            audience=client_id,
            issuer=provider.issuer,
            access_token=access_token,
            options={"require_aud": True, "require_iss": True, "require_exp": True},
        )
    except (JOSEError, ValueError, TypeError) as exc:
        # The library's message names the failed check (signature, audience, expiry, ...),
        # never the token.
        reason = type(exc).__name__
        raise IdTokenInvalid(f"the provider's ID token failed verification ({reason})") from None
    sent = claims.get("nonce")
    if not isinstance(sent, str) or not hmac.compare_digest(sent, nonce):
        raise IdTokenInvalid("the provider's ID token failed verification (nonce mismatch)")
    return {key: claims[key] for key in KEPT_CLAIMS if key in claims}
