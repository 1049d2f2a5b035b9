"""A provider as the connect flow and refreshers use it: every endpoint known.

`ResolvedProvider` is the one shape the rest of tokenfarm reads (connect flow, device flow,
revocation, the bound refresher). Explicit URLs on the row win; missing ones come from the
issuer's discovery document (OpenID Connect, then RFC 8414), fetched through the egress guard.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.db import one_or_not_found
from app.errors import DiscoveryFailed
from app.outbound import Outbound
from app.providers.discovery import DiscoveryCache, discovery_cache
from app.providers.models import Provider

logger = logging.getLogger("tokenfarm.providers")

ENDPOINT_FIELDS = (
    "authorization_url",
    "token_url",
    "revocation_url",
    "device_authorization_url",
    "jwks_uri",
)


@dataclass(frozen=True)
class ResolvedProvider:
    """A provider with its endpoints filled in (from the row, else from discovery)."""

    name: str
    issuer: str | None
    authorization_url: str | None
    token_url: str | None
    revocation_url: str | None
    device_authorization_url: str | None
    jwks_uri: str | None
    client_auth: str
    client_id_secret: str | None
    client_secret_secret: str | None
    private_key_secret: str | None
    scopes: tuple[str, ...] = ()
    authorize_params: dict[str, Any] = field(default_factory=dict)
    pkce: bool = True
    refresh_token_reuse_grace_seconds: int = 0
    catalog: str | None = None

    @classmethod
    def from_row(cls, row: Provider, discovered: dict[str, Any] | None = None) -> ResolvedProvider:
        """The row's explicit URLs, each missing one taken from a discovery document."""
        found = discovered or {}

        def pick(explicit: str | None, key: str) -> str | None:
            value = explicit or found.get(key)
            return value if isinstance(value, str) and value else None

        return cls(
            name=row.name,
            issuer=row.issuer,
            authorization_url=pick(row.authorization_url, "authorization_endpoint"),
            token_url=pick(row.token_url, "token_endpoint"),
            revocation_url=pick(row.revocation_url, "revocation_endpoint"),
            device_authorization_url=pick(
                row.device_authorization_url, "device_authorization_endpoint"
            ),
            jwks_uri=pick(row.jwks_uri, "jwks_uri"),
            client_auth=row.client_auth,
            client_id_secret=row.client_id_secret,
            client_secret_secret=row.client_secret_secret,
            private_key_secret=row.private_key_secret,
            scopes=tuple(row.scopes or ()),
            authorize_params=dict(row.authorize_params or {}),
            pkce=row.pkce,
            refresh_token_reuse_grace_seconds=row.refresh_token_reuse_grace_seconds,
            catalog=row.catalog,
        )


def needs_discovery(row: Provider) -> bool:
    """Whether the row relies on its issuer's discovery document for an endpoint."""
    return row.issuer is not None and any(getattr(row, name) is None for name in ENDPOINT_FIELDS)


async def resolve_provider(
    session: AsyncSession,
    name: str,
    outbound: Outbound | None = None,
    *,
    cache: DiscoveryCache | None = None,
) -> ResolvedProvider:
    """The provider `name` with every endpoint known, or NotFound (see `resolve_row`).

    A fetch happens inside the session's transaction, which the read began; a caller that
    wants none open across the fetch loads the row, ends its transaction, then `resolve_row`s.
    """
    row = await one_or_not_found(
        session, select(Provider).where(col(Provider.name) == name), f"provider {name!r}"
    )
    return await resolve_row(row, outbound, cache=cache)


async def resolve_row(
    row: Provider, outbound: Outbound | None = None, *, cache: DiscoveryCache | None = None
) -> ResolvedProvider:
    """A provider row with every endpoint known.

    A provider with an issuer and a missing endpoint takes it from the issuer's discovery
    document (cached per process; fetched through `outbound`, the egress-guarded client).
    Discovery failing, or naming another issuer, is `DiscoveryFailed` (502) — unless the row
    itself names the authorization and token endpoints: then only optional endpoints
    (revocation, device, JWKS) were wanted, they stay None, and the provider still works (a
    document that was never used can't mix issuers up). Without `outbound` only a cached
    document can help: endpoints nobody gave stay None.
    """
    if not needs_discovery(row):
        return ResolvedProvider.from_row(row)
    assert row.issuer is not None
    documents = cache or discovery_cache
    if outbound is None:
        return ResolvedProvider.from_row(row, documents.cached(row.issuer))
    try:
        document = await documents.document(row.issuer, outbound)
    except DiscoveryFailed as exc:
        if row.authorization_url is None or row.token_url is None:
            raise
        logger.warning(
            "provider %s: discovery failed, using its explicit endpoints only: %s",
            row.name,
            exc.message,
        )
        return ResolvedProvider.from_row(row)
    return ResolvedProvider.from_row(row, document)
