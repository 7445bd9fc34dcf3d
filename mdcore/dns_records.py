"""DNS records each hosted domain needs, as zone-file lines (RFC 1035 section 5).

MX names the host that takes the domain's mail (RFC 5321 section 5.1), A and AAAA
give the domain's own host name its addresses, and an SPF record (RFC 7208) lists
the addresses the domain's mail leaves from.
"""

import ipaddress
from collections.abc import Iterator

from mdcore.mtaconfig import HostedDomain, HostedMail

DEFAULT_TTL = 3600
MX_PREFERENCE = 10


def zone_lines(mail: HostedMail, ttl: int = DEFAULT_TTL) -> str:
    """The records of every hosted and alias domain, one block per domain."""
    blocks = ["\n".join(_domain_block(domain, ttl)) for domain in mail.domains]
    return "\n\n".join(blocks) + "\n" if blocks else ""


def _domain_block(domain: HostedDomain, ttl: int) -> Iterator[str]:
    yield f"; {domain.name}"
    for name in domain.names:
        yield _record(name, ttl, "MX", f"{MX_PREFERENCE} {domain.hostname}.")
        yield _record(name, ttl, "TXT", f'"{spf(domain)}"')
    yield from _host_records(domain, ttl)


def _host_records(domain: HostedDomain, ttl: int) -> Iterator[str]:
    if not domain.own_hostname:
        if domain.addresses:
            yield (
                f"; {domain.name} has addresses but no hostname setting: set one "
                "so that its MX leads to them"
            )
        return
    if not domain.addresses:
        yield f"; {domain.hostname}: give it this server's A/AAAA records"
        return
    for address in domain.addresses:
        kind = "AAAA" if ipaddress.ip_address(address).version == 6 else "A"
        yield _record(domain.hostname, ttl, kind, address)


def spf(domain: HostedDomain) -> str:
    """The SPF policy: the outgoing address, else the domain's addresses, else MX.

    "~all" (softfail) rather than "-all": mail the domain's users send through
    other servers is marked, not refused, until the admin lists those too.
    """
    addresses = domain.outgoing or domain.addresses
    if not addresses:
        return "v=spf1 mx ~all"
    mechanisms = [
        f"ip{ipaddress.ip_address(address).version}:{address}" for address in addresses
    ]
    return " ".join(["v=spf1", *mechanisms, "~all"])


def _record(name: str, ttl: int, kind: str, data: str) -> str:
    return f"{name}.\t{ttl}\tIN\t{kind}\t{data}"
