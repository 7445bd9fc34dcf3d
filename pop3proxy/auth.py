"""Who a POP3 login is: the domain it belongs to, the password check, the throttle.

A login is checked only inside the domain chosen for the session (mdcore's
domainchoice: the login's own @domain or %domain, the server address, the
TLS server name, the client network), so "foo@abc.example" never
authenticates against another domain's foo. An unknown user, a missing
domain and a wrong password cost the same work and get the same answer, so
the replies tell nothing about which mailboxes exist.

`Authenticator.check()` blocks (Argon2 takes tens of milliseconds) and runs
in a worker thread; `LoginThrottle` (shared with the web page, in mdcore) is
touched only from the event loop.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from mdcore.config import ServerConfig
from mdcore.domainchoice import Choice, DomainRules, SessionFacts
from mdcore.errors import InvalidNameError
from mdcore.names import fold_local
from mdcore.namespace import NamespaceUnavailableError, Registry
from mdcore.passwords import verify_password
from mdcore.throttle import LoginThrottle as LoginThrottle  # re-exported
from pop3proxy.events import LoginMethod


class Outcome(enum.Enum):
    """How a login ended, as the login log line says it."""

    OK = "ok"
    FAILED = "failed"
    DISABLED = "disabled"
    IN_USE = "in-use"
    UNAVAILABLE = "unavailable"
    FORWARD = "forward"


@dataclass(frozen=True)
class LoginAttempt:
    """One USER/PASS or AUTH PLAIN, with what is known of the session."""

    login: str
    password: str = field(repr=False)
    authzid: str
    method: LoginMethod
    server_address: str
    client_address: str
    server_name: str


@dataclass(frozen=True)
class Verdict:
    """The answer to a login: the outcome and where the mailbox lives.

    `domain` is the hosted domain (an alias domain already followed), or
    the chosen domain when it is forwarded or unknown; `account` is the key
    in its namespace; `maildir` is set only for OK; `forward_to` only for
    FORWARD.
    """

    outcome: Outcome
    choice: Choice
    domain: str = ""
    account: str = ""
    maildir: Path | None = None
    forward_to: str = ""

    @property
    def address(self) -> str:
        """account@domain for logs and the throttle; the chosen form before that."""
        if self.account and self.domain:
            return f"{self.account}@{self.domain}"
        return self.choice.address.lower()


class Authenticator:
    """Checks logins against the accounts of the chosen domain only."""

    def __init__(self, config: ServerConfig, registry: Registry) -> None:
        """Compile the domain rules and trusted networks of the config."""
        self.registry = registry
        self.rules = DomainRules(config.domains)
        self.trusted = tuple(
            ipaddress.ip_network(network) for network in config.pop3.trusted_networks
        )

    def is_trusted(self, client_address: str) -> bool:
        """Whether cleartext passwords may come from this client (RFC 2595 2.3).

        An empty address is a unix socket peer: a local process.
        """
        if not client_address:
            return True
        try:
            address = ipaddress.ip_address(client_address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.trusted)

    def choose(self, attempt: LoginAttempt) -> Choice:
        """The domain of this login, by the shared rule order."""
        facts = SessionFacts(
            attempt.server_address,
            attempt.client_address,
            attempt.server_name,
            attempt.login,
        )
        return self.rules.choose(facts)

    def check(self, attempt: LoginAttempt) -> Verdict:
        """Decide a login; blocking (password hashing), run it in a worker."""
        choice = self.choose(attempt)
        # RFC 4616 section 2: acting as someone else needs a right we grant
        # nobody, so an authorization identity must name the login itself.
        if choice.domain is None or attempt.authzid not in ("", attempt.login):
            return _refused(choice, attempt.password)
        binding = self.rules.binding(choice.domain)
        if binding is not None and binding.forward_to:
            return Verdict(
                Outcome.FORWARD, choice, choice.domain, forward_to=binding.forward_to
            )
        return self._check_account(choice, attempt.password)

    def _check_account(self, choice: Choice, password: str) -> Verdict:
        assert choice.domain is not None
        try:
            namespace = self.registry.lookup(choice.domain)
        except (NamespaceUnavailableError, InvalidNameError):
            return Verdict(Outcome.UNAVAILABLE, choice, choice.domain)
        if namespace is None:
            return _refused(choice, password)

        name = fold_local(choice.user, namespace.case_sensitive)
        account = namespace.account(name)
        stored = account.password if account is not None else None
        if not verify_password(stored, password) or account is None:
            return Verdict(Outcome.FAILED, choice, namespace.domain, name)

        # A pending or disabled account is told so only once its password is
        # right: nobody else learns that it exists.
        if not account.can_log_in:
            return Verdict(Outcome.DISABLED, choice, namespace.domain, name)
        maildir = namespace.tree.maildir(name)
        return Verdict(Outcome.OK, choice, namespace.domain, name, maildir)


def _refused(choice: Choice, password: str) -> Verdict:
    """A failure that costs what a wrong password costs (no user to check)."""
    verify_password(None, password)
    return Verdict(Outcome.FAILED, choice, choice.domain or "")
