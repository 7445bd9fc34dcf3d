"""What an MTA must know about the hosted domains, read once from the registry.

Postfix and sendmail take hosted mail by domain, check recipients from a table, and
expand every alias that leads outside (lmtpd only stores mail and answers such an
alias 451 4.3.5). This module gathers those facts into one frozen record, HostedMail;
postfix_maps, sendmail_config and dns_records turn it into file texts.
"""

import ipaddress
from dataclasses import dataclass
from typing import NamedTuple

from mdcore.accounts import DISABLED
from mdcore.admin import Admin
from mdcore.aliases import CATCH_ALL
from mdcore.config import DomainBinding, ServerConfig
from mdcore.errors import ConfigError, MdmailError
from mdcore.listeners import Listen, parse_listen
from mdcore.names import parse_address
from mdcore.namespace import Registry
from mdcore.resolve import Outcome, Resolution, resolve

# Seconds the MTA waits to reach the milter: a milter that is down shows at once.
MILTER_CONNECT_TIMEOUT = 5


class MtaConfigError(MdmailError):
    """The registry or config cannot be turned into MTA configuration."""


@dataclass(frozen=True)
class HostedDomain:
    """One hosted domain as the MTA and DNS see it."""

    name: str
    hostname: str  # the domain's own host name, else the server's
    own_hostname: bool
    addresses: tuple[str, ...]  # the domain's server addresses (config domains:)
    outgoing: tuple[str, ...]  # where its mail leaves from: outgoing_address
    alias_domains: tuple[str, ...]
    delimiter: str
    accept_other_domains: bool = True  # whether its addresses take other domains' mail

    @property
    def names(self) -> tuple[str, ...]:
        """The domain and its alias domains."""
        return (self.name, *self.alias_domains)


@dataclass(frozen=True)
class OutsideAlias:
    """An alias, or a catch-all (address "@domain"), with targets outside.

    The MTA must expand it: the outside targets get their copy from the MTA, the
    mailboxes from lmtpd.
    """

    address: str
    mailboxes: tuple[str, ...]  # account addresses that also get a copy
    external: tuple[str, ...]

    @property
    def catch_all(self) -> bool:
        """Whether this is a domain's catch-all."""
        return self.address.startswith("@")


@dataclass(frozen=True)
class HostedMail:
    """Everything the MTA configuration is generated from."""

    hostname: str  # the server's
    lmtp: Listen  # where the MTA hands hosted mail
    lmtp_listen: tuple[Listen, ...]
    milter_socket: str  # libmilter form: inet:PORT@ADDRESS or unix:/path
    milter_timeout: int
    domains: tuple[HostedDomain, ...]
    recipients: tuple[str, ...]  # every valid address; "@domain" accepts all
    outside_aliases: tuple[OutsideAlias, ...]
    # Addresses that must be mapped to themselves, or an outside catch-all of
    # their domain would take their mail too (Postfix and sendmail look up
    # user@domain before @domain, and stop at the first match).
    kept: tuple[str, ...]

    @property
    def delimiters(self) -> str:
        """Every domain's recipient delimiter characters, each once."""
        return "".join(dict.fromkeys("".join(d.delimiter for d in self.domains)))

    def all_domain_names(self) -> list[str]:
        """Hosted and alias domains, in the order of the domains."""
        return [name for domain in self.domains for name in domain.names]


class _Names(NamedTuple):
    """The addresses of one domain, sorted into the groups the tables need."""

    valid: list[str]  # local parts that take mail
    all: list[str]  # every account and alias name
    outside: list[OutsideAlias]  # in the domain itself, "@" for the catch-all


def collect(admin: Admin, config: ServerConfig, lmtp: str = "") -> HostedMail:
    """Read the hosted domains, their names and aliases; lmtp picks the listener."""
    registry = Registry(admin.root)
    listen = tuple(parse_listen(spec) for spec in config.lmtp.listen)
    by_target: dict[str, list[str]] = {}
    for alias, target in sorted(admin.domain_aliases().items()):
        by_target.setdefault(target, []).append(alias)
    bindings = {binding.domain: binding for binding in config.domains}

    domains: list[HostedDomain] = []
    recipients: list[str] = []
    outside: list[OutsideAlias] = []
    kept: list[str] = []
    for name in admin.domains():
        domain = _hosted(admin, config, name, bindings, by_target.get(name, []))
        names = _names(admin, registry, name)
        domains.append(domain)
        recipients += _addresses(names.valid, domain.names)
        outside += [
            _rename(alias, other) for other in domain.names for alias in names.outside
        ]
        if any(alias.catch_all for alias in names.outside):
            local = {a.address.rpartition("@")[0] for a in names.outside}
            kept += _addresses([n for n in names.all if n not in local], domain.names)
    return HostedMail(
        hostname=config.hostname,
        lmtp=_pick_lmtp(listen, lmtp),
        lmtp_listen=listen,
        milter_socket=config.milter.socket,
        milter_timeout=config.milter.timeout,
        domains=tuple(domains),
        recipients=tuple(recipients),
        outside_aliases=tuple(outside),
        kept=tuple(kept),
    )


def _hosted(
    admin: Admin,
    config: ServerConfig,
    name: str,
    bindings: dict[str, DomainBinding],
    alias_domains: list[str],
) -> HostedDomain:
    settings = admin.settings(name)
    binding = bindings.get(name, DomainBinding(domain=name))
    outgoing = settings.outgoing_address.strip()
    if outgoing:
        try:
            outgoing = str(ipaddress.ip_address(outgoing))
        except ValueError:
            raise MtaConfigError(
                f"domain {name}: outgoing_address {outgoing!r} is not an IP address"
            ) from None
    return HostedDomain(
        name=name,
        hostname=settings.hostname or config.hostname,
        own_hostname=bool(settings.hostname),
        addresses=binding.addresses,
        outgoing=(outgoing,) if outgoing else (),
        alias_domains=tuple(alias_domains),
        delimiter=settings.recipient_delimiter,
        accept_other_domains=settings.accept_other_domains,
    )


def _names(admin: Admin, registry: Registry, domain: str) -> _Names:
    accounts = admin.accounts(domain)
    aliases = admin.aliases(domain)
    valid = [account.name for account in accounts if account.state != DISABLED]
    outside: list[OutsideAlias] = []
    for name, targets in sorted(
        aliases.items(), key=lambda item: (item[0] == CATCH_ALL, item[0])
    ):
        address = f"@{domain}" if name == CATCH_ALL else f"{name}@{domain}"
        if name == CATCH_ALL:
            reach = _expand(registry, domain, targets)
        else:
            reach = _reach(_checked(resolve(registry, address), address))
        if reach.mailboxes or reach.external:
            valid.append(name)
        if reach.external:
            outside.append(OutsideAlias(address, reach.mailboxes, reach.external))
    every = sorted(
        {account.name for account in accounts} | (set(aliases) - {CATCH_ALL})
    )
    return _Names(_in_order(valid), every, outside)


class _Reach(NamedTuple):
    """Where mail for an alias ends up: account addresses and outside addresses."""

    mailboxes: tuple[str, ...]
    external: tuple[str, ...]


def _reach(found: Resolution) -> _Reach:
    boxes = (f"{box.account}@{box.domain}" for box in found.mailboxes)
    return _Reach(tuple(boxes), found.external)


def _checked(found: Resolution, address: str) -> Resolution:
    if found.outcome is Outcome.UNAVAILABLE:
        raise MtaConfigError(f"cannot read the domain of {address} now; try again")
    return found


def _expand(registry: Registry, domain: str, targets: tuple[str, ...]) -> _Reach:
    """The catch-all's targets resolved one by one, as lmtpd would."""
    mailboxes: dict[str, None] = {}
    external: dict[str, None] = {}
    for target in targets:
        address = str(parse_address(target if "@" in target else f"{target}@{domain}"))
        found = _checked(resolve(registry, address), address)
        if found.outcome is Outcome.NOT_HOSTED:
            external[address] = None
            continue
        reach = _reach(found)
        mailboxes.update(dict.fromkeys(reach.mailboxes))
        external.update(dict.fromkeys(reach.external))
    return _Reach(tuple(mailboxes), tuple(external))


def _rename(alias: OutsideAlias, domain: str) -> OutsideAlias:
    """The same alias under another name of its domain (an alias domain)."""
    local = alias.address.rpartition("@")[0]
    return OutsideAlias(f"{local}@{domain}", alias.mailboxes, alias.external)


def _in_order(names: list[str]) -> list[str]:
    """Names sorted, the catch-all last."""
    return sorted(dict.fromkeys(names), key=lambda name: (name == CATCH_ALL, name))


def _addresses(names: list[str], domains: tuple[str, ...]) -> list[str]:
    """Each name in each domain; the catch-all becomes "@domain"."""
    return [
        f"@{domain}" if name == CATCH_ALL else f"{name}@{domain}"
        for domain in domains
        for name in names
    ]


def _pick_lmtp(listen: tuple[Listen, ...], wanted: str) -> Listen:
    """The listener the MTA delivers to: wanted, else the first configured one."""
    if not wanted:
        if not listen:
            raise MtaConfigError("lmtp.listen is empty: nowhere to deliver")
        return listen[0]
    try:
        return parse_listen(wanted)
    except ConfigError:
        raise MtaConfigError(
            f"--lmtp {wanted!r} is not unix:/path or inet:ADDRESS:PORT"
        ) from None
