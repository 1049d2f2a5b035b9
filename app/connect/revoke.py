"""Token revocation (RFC 7009): telling the provider a refresh token is no longer wanted.

The request carries `token` and `token_type_hint=refresh_token`, authenticated as the provider's
`client_auth` says (app/connect/client.py, the one home of client authentication). A provider
that revokes a refresh token revokes its grant's access tokens with it (RFC 7009 §2.1). Nothing
returned or raised here quotes the token: a provider's error text is cleaned of it first.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.connect.client import ClientCredentials, authenticated_post, clean_text
from app.errors import TokenfarmError
from app.outbound import Outbound, describe_target
from app.providers.resolve import ResolvedProvider


@dataclass(frozen=True)
class Revocation:
    """What revoking at the provider did: `revoked`, or why not (`message`, fit to show)."""

    attempted: bool
    revoked: bool
    message: str | None = None
    upstream_status: int | None = None


NOT_ATTEMPTED_NO_ENDPOINT = Revocation(
    attempted=False,
    revoked=False,
    message="the provider has no revocation endpoint: the grant stays valid at the provider "
    "until it expires or is revoked there",
)
NOT_ATTEMPTED_NO_TOKEN = Revocation(
    attempted=False, revoked=False, message="there was no refresh token to revoke"
)


async def revoke_refresh_token(
    outbound: Outbound,
    credentials: ClientCredentials,
    provider: ResolvedProvider,
    refresh_token: str,
) -> Revocation:
    """Revoke `refresh_token` at the provider's revocation endpoint; never raises for the
    provider's or the network's failures (the caller disconnects locally anyway)."""
    url = provider.revocation_url
    if url is None:
        return NOT_ATTEMPTED_NO_ENDPOINT
    target = describe_target("POST", url)
    form = {"token": refresh_token, "token_type_hint": "refresh_token"}
    try:
        response, hidden = await authenticated_post(outbound, credentials, provider, url, form)
    except TokenfarmError as exc:
        # Outbound's messages name the target and the kind of failure, never a body.
        return Revocation(attempted=True, revoked=False, message=exc.message)
    if 200 <= response.status < 300:
        return Revocation(attempted=True, revoked=True, upstream_status=response.status)
    said = clean_text(response.content.decode("utf-8", errors="replace"), hidden)
    return Revocation(
        attempted=True,
        revoked=False,
        message=f"{target} answered {response.status}" + (f": {said}" if said else ""),
        upstream_status=response.status,
    )
