"""Who is asking, as the sign-in limits count it: the client's address.

The socket's peer, unless the peer is a proxy listed in TRUSTED_PROXIES: then the right-most
X-Forwarded-For entry that is not itself a trusted proxy, the one the outermost trusted proxy
saw connect (all trusted: the left-most, the first hop known). Entries further left were
written by the client (anyone can send the header) and are never believed; a peer that is not
trusted is never asked for the header at all.

An IPv6 client is counted by its /64: one subscriber routinely holds a whole /64, so counting
single addresses would give one guesser 2^64 allowances.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from vpiska.config import Network

IPV6_PREFIX = 64

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def client_address(scope: Mapping[str, Any], trusted: tuple[Network, ...]) -> str:
    """The key the limits count `scope`'s client under ("" when the server knows no peer)."""
    client = scope.get("client")
    peer = _parse(client[0]) if client else None
    if peer is None:
        return ""
    address = peer
    if _is_trusted(peer, trusted):
        for entry in reversed(_forwarded(scope)):
            forwarded = _parse(entry)
            if forwarded is None:
                break  # not an address: the last proxy that wrote one is all that is known
            address = forwarded
            if not _is_trusted(forwarded, trusted):
                break
    return _key(address)


def _forwarded(scope: Mapping[str, Any]) -> list[str]:
    """Every X-Forwarded-For entry, in order (several headers read as one list, RFC 9110)."""
    entries: list[str] = []
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-for":
            entries += (entry.strip() for entry in value.decode("latin-1").split(","))
    return entries


def _parse(text: str) -> Address | None:
    """An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:5678`."""
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_trusted(address: Address, trusted: tuple[Network, ...]) -> bool:
    return any(address in network for network in trusted)


def _key(address: Address) -> str:
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return str(address)
