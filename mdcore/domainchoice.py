"""The rule that ties a session to a domain, shared by the POP3 proxy and the milter.

A client that knows nothing of our domains still lands in the right one. The rules,
from the `domains:` list of the server config, are tried in this order:

1. a login of the form ``user@domain`` or ``user%domain`` names its domain, and is
   only ever checked against that domain's accounts;
2. the server address the client connected to (one or more per domain, IPv4/IPv6);
3. the TLS server name the client asked for (SNI);
4. the client's own address, by the most specific network that contains it.

The first rule that applies decides; `explain()` says which one did.
"""

import enum
import ipaddress
from dataclasses import dataclass

from mdcore.config import DomainBinding
from mdcore.errors import InvalidNameError
from mdcore.names import normalize_domain

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Rule(enum.Enum):
    """Which rule chose the domain."""

    LOGIN = "login"
    SERVER_ADDRESS = "server-address"
    SERVER_NAME = "server-name"
    CLIENT_NETWORK = "client-network"
    NONE = "none"


@dataclass(frozen=True)
class SessionFacts:
    """What is known about a session when its domain is chosen."""

    server_address: str = ""
    client_address: str = ""
    server_name: str = ""
    login: str = ""


@dataclass(frozen=True)
class Choice:
    """The chosen domain (None: no rule applied), the rule, and the user name."""

    domain: str | None
    rule: Rule
    user: str
    reason: str

    @property
    def address(self) -> str:
        """user@domain, for authentication and logs."""
        return f"{self.user}@{self.domain}" if self.domain else self.user


def _ip(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    # A v4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


class DomainRules:
    """The compiled rule set: lookups by address, name and network."""

    def __init__(self, bindings: tuple[DomainBinding, ...]) -> None:
        self.bindings = bindings
        self.by_address: dict[IPAddress, str] = {}
        self.by_name: dict[str, str] = {}
        networks: list[tuple[IPNetwork, str]] = []
        for binding in bindings:
            for text in binding.addresses:
                address = _ip(text)
                if address is not None:
                    self.by_address[address] = binding.domain
            for name in binding.server_names:
                self.by_name[name] = binding.domain
            for network in binding.client_networks:
                networks.append(
                    (ipaddress.ip_network(network, strict=False), binding.domain)
                )
        # Most specific first: a /24 of one domain inside a /16 of another wins.
        self.networks = sorted(networks, key=lambda item: -item[0].prefixlen)

    def binding(self, domain: str) -> DomainBinding | None:
        """The binding of a domain, if the config has one."""
        return next((b for b in self.bindings if b.domain == domain), None)

    def choose(self, facts: SessionFacts) -> Choice:
        """Apply the rules in order to the facts of a session."""
        user, login_domain = split_login(facts.login)
        if login_domain:
            return Choice(
                login_domain, Rule.LOGIN, user, f"the login names {login_domain}"
            )

        server = _ip(facts.server_address)
        if server is not None and server in self.by_address:
            domain = self.by_address[server]
            return Choice(domain, Rule.SERVER_ADDRESS, user, f"server address {server}")

        name = _name(facts.server_name)
        if name and name in self.by_name:
            domain = self.by_name[name]
            return Choice(domain, Rule.SERVER_NAME, user, f"TLS server name {name}")

        client = _ip(facts.client_address)
        for network, domain in self.networks:
            if (
                client is not None
                and client.version == network.version
                and client in network
            ):
                return Choice(
                    domain, Rule.CLIENT_NETWORK, user, f"client network {network}"
                )
        return Choice(None, Rule.NONE, user, "no rule names a domain for this session")

    def domain_of_server_address(self, address: str) -> str | None:
        """The domain whose own address this is (for per-address policy)."""
        server = _ip(address)
        return self.by_address.get(server) if server is not None else None


def _name(text: str) -> str:
    if not text:
        return ""
    try:
        return normalize_domain(text)
    except InvalidNameError:
        return ""


def split_login(login: str) -> tuple[str, str]:
    """Split a login into (user, domain); domain is "" for a plain user name.

    Both ``user@domain`` and ``user%domain`` (for clients that cannot send "@" in a
    user name) name a domain; the last separator counts.
    """
    cut = max(login.rfind("@"), login.rfind("%"))
    if cut <= 0:
        return login, ""
    try:
        return login[:cut], normalize_domain(login[cut + 1 :])
    except InvalidNameError:
        return login, ""


def explain(rules: DomainRules, facts: SessionFacts) -> str:
    """One line saying which domain a session gets, and by which rule."""
    choice = rules.choose(facts)
    if choice.domain is None:
        return f"no domain: {choice.reason}"
    return f"domain {choice.domain} by rule {choice.rule.value} ({choice.reason}); " + (
        f"the user is checked as {choice.address}"
    )
