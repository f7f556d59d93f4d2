"""Who is connecting: the one rule for the client's address, used for single sign-on,
the login rate limit and the service's log lines alike.

Uvicorn's own proxy-header handling is off (``service.server``: ``proxy_headers=False``),
so ``request.client`` is the socket's peer, never a header's word. Only when that peer
is one of ``CXR_TRUSTED_PROXIES`` is X-Forwarded-For read, from the right (the hop the
proxy itself appended) leftwards, skipping the trusted proxies: the first address that is
not one of them is the client. Anything a client writes further left is not believed,
and an entry that is not an address stops the walk.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from fastapi import Request
from starlette.types import Scope

from cxr_orient.settings import Settings

__all__ = [
    "Networks",
    "client_address",
    "forwarded_client",
    "is_trusted",
    "peer_is_trusted_proxy",
    "scope_client_address",
]

Networks = Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]


def is_trusted(host: str | None, networks: Networks) -> bool:
    """``host`` is an address inside one of ``networks``."""
    if not host or not networks:
        return False
    try:
        address = ipaddress.ip_address(host.strip())
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
    return any(address in network for network in networks)


def forwarded_client(peer: str, forwarded_for: Sequence[str], networks: Networks) -> str:
    """The client's address: ``peer`` itself unless it is a trusted proxy; then the
    rightmost X-Forwarded-For entry that is not a trusted proxy (every value of the
    header, in order, comma-separated lists allowed)."""
    if not is_trusted(peer, networks):
        return peer
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
    client = peer
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            break  # not an address: nothing left of it can be believed either
        client = hop
        if not is_trusted(hop, networks):
            break
    return client


def peer_is_trusted_proxy(request: Request, settings: Settings) -> bool:
    """The socket's peer is one of CXR_TRUSTED_PROXIES (the only callers whose
    CXR_TRUSTED_USER_HEADER is believed)."""
    return is_trusted(
        request.client.host if request.client else None, settings.http.trusted_proxies
    )


def scope_client_address(scope: Scope, settings: Settings) -> str:
    """The caller's address by the one rule above, from an ASGI scope (``unknown``
    without a peer): for the middlewares, which log before any route runs."""
    client = scope.get("client")
    peer = str(client[0]) if client else "unknown"
    forwarded = [
        value.decode("latin-1")
        for name, value in scope.get("headers", [])
        if name == b"x-forwarded-for"
    ]
    return forwarded_client(peer, forwarded, settings.http.trusted_proxies)


def client_address(request: Request, settings: Settings) -> str:
    """The caller's address by the one rule above: what the login rate limit counts and
    the service's log lines name."""
    return scope_client_address(request.scope, settings)
