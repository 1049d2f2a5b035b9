"""Who is on the other end of a request: the client's address, the one rule the login throttle
and the rate limits count by.

The connection's peer, unless that peer is a trusted proxy (`TOKENFARM_TRUSTED_PROXIES`); then,
walking `X-Forwarded-For` from the right, the first hop that is not a trusted proxy. Without
trusted proxies the header is ignored: any client could write it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from starlette.types import Scope

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_host(
    peer: str | None, forwarded_for: list[str], trusted: Sequence[Network]
) -> str | None:
    """The client's address from the peer and the `X-Forwarded-For` values (see the module)."""
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",") if hop.strip()]
    host = peer
    while host is not None and hops and _is_trusted(host, trusted):
        host = hops.pop()
    return host


def client_address(scope: Scope, trusted: Sequence[Network]) -> str | None:
    """The client's address of an ASGI request (cheap when no proxy is trusted: the peer)."""
    client = scope.get("client")
    peer = str(client[0]) if client else None
    if not trusted:
        return peer
    forwarded_for = [
        value.decode("latin-1") for key, value in scope["headers"] if key == b"x-forwarded-for"
    ]
    return client_host(peer, forwarded_for, trusted)


def _is_trusted(host: str, trusted: Sequence[Network]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in trusted)
