"""Where a request came from, believing X-Forwarded-* only from trusted proxies.

Behind a reverse proxy the peer is the proxy, and the browser's address, the
host name it asked for and whether it used https arrive in X-Forwarded-For,
X-Forwarded-Host and X-Forwarded-Proto. Anyone can send those headers, so they
count only when the peer itself is in the configured trusted_proxies.
"""

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Origin:
    """The client address, the host name asked for, and the scheme used."""

    client: str
    host: str
    scheme: str

    @property
    def secure(self) -> bool:
        """Whether the browser reached us over https."""
        return self.scheme == "https"


def parse_networks(values: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """The trusted proxies' networks, from the config's strings."""
    return tuple(ipaddress.ip_network(value, strict=False) for value in values)


def is_trusted(peer: str, trusted: tuple[IPNetwork, ...]) -> bool:
    """Whether the peer address lies in one of the trusted networks."""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in trusted)


def origin(
    peer: str,
    scheme: str,
    headers: Mapping[str, str],
    trusted: tuple[IPNetwork, ...],
) -> Origin:
    """The request's origin: the peer's own unless the peer is a trusted proxy."""
    host = headers.get("host", "")
    if not is_trusted(peer, trusted):
        return Origin(peer, host, scheme)
    client = _forwarded_client(headers.get("x-forwarded-for", ""), trusted) or peer
    forwarded_host = _last(headers.get("x-forwarded-host", "")) or host
    proto = _last(headers.get("x-forwarded-proto", "")).lower()
    return Origin(
        client, forwarded_host, proto if proto in ("http", "https") else scheme
    )


def _forwarded_client(chain: str, trusted: tuple[IPNetwork, ...]) -> str:
    # Each proxy appends the address it got the request from, so the entry the
    # browser could not have forged is the right-most one no trusted proxy wrote.
    hops = [hop.strip() for hop in chain.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop, trusted):
            return hop
    return hops[0] if hops else ""


def _last(value: str) -> str:
    # The last value is the one our own proxy set; earlier ones came from outside.
    return value.rsplit(",", 1)[-1].strip()
