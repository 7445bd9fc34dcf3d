"""The milter's policy at SMTP time, decided without pymilter: pure rules on records.

Each SMTP step has one check: the connection picks the domain whose own server
address the client used, MAIL applies that domain's refused senders and size limit,
RCPT asks the recipient's namespace (unknown users, limits, quota), and the end of
the message re-checks the real size. A check returns a `Decision`; the filter turns
it into a milter reply, so every rule is tested here without an MTA.
"""

import enum
import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace

from mdcore.config import ServerConfig
from mdcore.domainchoice import DomainRules
from mdcore.errors import InvalidNameError, MdmailError
from mdcore.names import normalize_domain
from mdcore.namespace import Namespace, Registry
from mdcore.quota import QuotaLimits, would_exceed
from mdcore.resolve import Outcome, Resolution, resolve
from mdcore.settings import OverQuota

log = logging.getLogger(__name__)

# The header that records which domain the connection was tied to, and why.
DOMAIN_HEADER = "X-Mdmail-Domain"

# A bound on the connection choices kept, should an MTA report ever more addresses.
MAX_REMEMBERED_CONNECTIONS = 1024


class Verdict(enum.Enum):
    """What the MTA is told for one step."""

    ACCEPT = "accepted"  # our domain's rules were applied and allow it
    PASS = "passed"  # not ours to judge: left to the MTA's own rules
    REJECT = "rejected"  # 5xx
    TEMPFAIL = "deferred"  # 4xx: the client keeps the message and retries


class Check(enum.Enum):
    """The rule that made a decision (the `rule=` of the log line)."""

    KNOWN_RECIPIENT = "known-recipient"
    UNKNOWN_USER = "unknown-user"
    BAD_ADDRESS = "bad-address"
    NOT_HOSTED = "not-hosted"
    UNQUALIFIED = "unqualified"
    OTHER_DOMAIN = "other-domain"
    DISABLED = "disabled"
    REFUSED_SENDER = "refused-sender"
    MESSAGE_SIZE = "message-size"
    MAX_RECIPIENTS = "max-recipients"
    QUOTA = "quota"
    UNAVAILABLE = "unavailable"
    SENDER = "sender"
    MESSAGE = "message"


@dataclass(frozen=True)
class Reply:
    """An SMTP reply the milter asks the MTA to send, with its RFC 3463 code."""

    code: int
    enhanced: str
    text: str

    @property
    def verdict(self) -> Verdict:
        """REJECT for 5xx, TEMPFAIL for 4xx."""
        return Verdict.REJECT if self.code >= 500 else Verdict.TEMPFAIL

    def naming(self, domain: str) -> "Reply":
        """The reply with {domain} in its text filled in (domain names hold no %)."""
        return replace(self, text=self.text.format(domain=domain))

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


# Every reply of the milter. Texts name no address: libmilter treats "%" in a reply
# as a format character, and an address may hold one.
NO_SUCH_USER = Reply(550, "5.1.1", "User unknown")
BAD_RECIPIENT = Reply(553, "5.1.3", "Bad recipient address syntax")
MAILBOX_DISABLED = Reply(550, "5.2.1", "Mailbox disabled")
# RFC 3463 section 3.8: X.7.1, delivery not authorized.
SENDER_REFUSED = Reply(550, "5.7.1", "Mail from this sender is refused by {domain}")
OTHER_DOMAIN = Reply(
    550,
    "5.7.1",
    "Relay access denied: this server address takes mail for {domain} only",
)
# RFC 3463 section 3.4: X.3.4, message too big for system; 552 per RFC 1870
# section 6.1.
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message exceeds the maximum size of {domain}")
# RFC 5321 section 4.5.3.1.10: too many recipients is a 452, so the client sends
# the rest in another transaction.
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients for {domain}")
# RFC 3463 section 3.3: X.2.2, mailbox full; temporary unless the domain bounces.
MAILBOX_FULL = Reply(452, "4.2.2", "Mailbox full, try again later")
MAILBOX_FULL_PERM = Reply(552, "5.2.2", "Mailbox full")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")


@dataclass(frozen=True)
class Decision:
    """The answer to one step: the verdict, the rule, the reply and the domain."""

    verdict: Verdict
    check: Check
    reply: Reply | None = None
    domain: str = ""
    recipient: "Recipient | None" = None

    @property
    def allows(self) -> bool:
        """Whether the step goes on (ACCEPT or PASS)."""
        return self.verdict in (Verdict.ACCEPT, Verdict.PASS)


def refusal(check: Check, reply: Reply, domain: str = "") -> Decision:
    """A REJECT or TEMPFAIL decision, by the class of the reply."""
    return Decision(reply.verdict, check, reply.naming(domain), domain)


class DomainRule(enum.Enum):
    """How the connection was tied to a domain."""

    SERVER_ADDRESS = "server-address"  # the client used the domain's own address
    LISTENER_NAME = "listener-name"  # the MTA listener is named after the domain
    NONE = "none"


@dataclass(frozen=True)
class Connection:
    """The domain of one SMTP connection (None when no rule names one)."""

    domain: str | None
    rule: DomainRule
    server_address: str = ""
    listener_name: str = ""

    def header_value(self) -> str:
        """The value of the X-Mdmail-Domain header that records this choice."""
        if self.rule is DomainRule.SERVER_ADDRESS:
            return f"{self.domain} (rule: server-address {self.server_address})"
        if self.rule is DomainRule.LISTENER_NAME:
            return f"{self.domain} (rule: listener-name {self.listener_name})"
        shown = self.server_address or "unknown"
        return f"none (rule: none, server address {shown})"


UNKNOWN_CONNECTION = Connection(None, DomainRule.NONE)


@dataclass(frozen=True)
class Recipient:
    """An accepted recipient: as the client gave it, and as it is delivered."""

    given: str  # the RCPT argument, angle brackets kept
    address: str  # qualified, without angle brackets
    domain: str  # the hosted domain it belongs to

    @property
    def qualified(self) -> bool:
        """Whether the milter added the domain (a bare `foo` or `<foo>`)."""
        return "@" not in self.given


@dataclass(frozen=True)
class Envelope:
    """One transaction as far as it got: sender, declared size, accepted recipients."""

    mail_from: str = ""
    declared_size: int | None = None
    recipients: tuple[Recipient, ...] = ()

    def adding(self, recipient: Recipient) -> "Envelope":
        """The envelope with one more accepted recipient."""
        # Built directly: dataclasses.replace() costs several times more, per RCPT.
        recipients = (*self.recipients, recipient)
        return Envelope(self.mail_from, self.declared_size, recipients)

    def count_for(self, domain: str) -> int:
        """Accepted recipients of one domain so far."""
        return sum(1 for recipient in self.recipients if recipient.domain == domain)

    def rewrites(self) -> list[tuple[str, str]]:
        """(given, qualified address) for every recipient the milter qualified."""
        return [(r.given, r.address) for r in self.recipients if r.qualified]


def unbracket(address: str) -> str:
    """The address without white space and one pair of angle brackets."""
    text = address.strip()
    if text.startswith("<") and text.endswith(">"):
        return text[1:-1].strip()
    return text


def declared_size(params: Iterable[str]) -> int | None:
    """The SIZE= value of MAIL FROM's ESMTP parameters (RFC 1870), if valid."""
    for param in params:
        name, _, value = param.partition("=")
        if name.upper() == "SIZE" and value.isdigit():
            return int(value)
    return None


def sender_refused(mail_from: str, refused: tuple[str, ...]) -> bool:
    """Whether a sender matches a refused address or @domain (case-insensitive).

    The null sender of bounces is never refused: RFC 5321 section 6.1 requires
    that delivery status notifications can always be delivered.
    """
    if not mail_from or not refused:
        return False
    sender = mail_from.lower()
    domain = sender.rpartition("@")[2]
    return sender in refused or f"@{domain}" in refused or f"@{_ace(domain)}" in refused


def _ace(domain: str) -> str:
    try:
        return normalize_domain(domain)
    except InvalidNameError:
        return domain


class Policy:
    """The checks of every SMTP step, over the registry and the domain rules."""

    def __init__(self, registry: Registry, rules: DomainRules) -> None:
        self.registry = registry
        self.rules = rules
        # The rules are fixed for the process, so each (server address, listener
        # name) pair the MTA reports is worked out once; the pairs are the MTA's
        # own addresses and listeners, a handful.
        self._connections: dict[tuple[str, str], Connection] = {}

    @classmethod
    def from_config(cls, config: ServerConfig) -> "Policy":
        """The policy over the configured state root and `domains:` list."""
        return cls(Registry(config.root), DomainRules(config.domains))

    # Connection

    def check_connect(self, server_address: str, listener_name: str = "") -> Connection:
        """Tie the connection to the domain whose own address the client used.

        Failing that, an MTA listener named after a configured domain (Postfix:
        `-o milter_macro_daemon_name=abc.example`) ties it to that domain.
        """
        key = (server_address, listener_name)
        connection = self._connections.get(key)
        if connection is None:
            if len(self._connections) >= MAX_REMEMBERED_CONNECTIONS:
                self._connections.clear()
            connection = self._connections[key] = self._connection(*key)
        return connection

    def _connection(self, server_address: str, listener_name: str) -> Connection:
        """The rule that ties this server address and listener to a domain, if any."""
        domain = self.rules.domain_of_server_address(server_address)
        if domain is not None:
            rule = DomainRule.SERVER_ADDRESS
        elif self.rules.binding(named := _ace(listener_name)) is not None:
            domain, rule = named, DomainRule.LISTENER_NAME
        else:
            rule = DomainRule.NONE
        return Connection(domain, rule, server_address, listener_name)

    # MAIL

    def check_mail(
        self, mail_from: str, size: int | None, connection: Connection
    ) -> Decision:
        """Refused senders and the SIZE limit of the connection's domain."""
        if connection.domain is None:
            return Decision(Verdict.PASS, Check.SENDER)
        domain = connection.domain
        try:
            namespace = self.registry.lookup(domain)
        except MdmailError:
            return refusal(Check.UNAVAILABLE, LOCAL_ERROR, domain)
        if namespace is None:
            # A configured address of a domain not (or no longer) hosted.
            return Decision(Verdict.PASS, Check.SENDER, domain=domain)
        settings = namespace.settings
        if sender_refused(mail_from, settings.refused_senders):
            return refusal(Check.REFUSED_SENDER, SENDER_REFUSED, domain)
        if _too_big(size, settings.max_message_size):
            return refusal(Check.MESSAGE_SIZE, MESSAGE_TOO_BIG, domain)
        return Decision(Verdict.ACCEPT, Check.SENDER, domain=domain)

    # RCPT

    def check_rcpt(
        self, rcpt: str, connection: Connection, envelope: Envelope
    ) -> Decision:
        """Decide one recipient; an accepted one comes back in `recipient`."""
        address = unbracket(rcpt)
        if "@" not in address:
            if connection.domain is None:
                return Decision(Verdict.PASS, Check.UNQUALIFIED)
            # A bare `foo` on a domain's own address means foo of that domain.
            address = f"{address}@{connection.domain}"
        try:
            return self._check_address(rcpt, address, connection, envelope)
        except (MdmailError, OSError):
            log.warning("recipient check failed for %s", address, exc_info=True)
            return refusal(Check.UNAVAILABLE, LOCAL_ERROR, connection.domain or "")

    def _check_address(
        self, rcpt: str, address: str, connection: Connection, envelope: Envelope
    ) -> Decision:
        resolution = resolve(self.registry, address)
        outcome = resolution.outcome
        if outcome is Outcome.UNAVAILABLE:
            return refusal(Check.UNAVAILABLE, LOCAL_ERROR, resolution.domain)
        if outcome in (Outcome.INVALID, Outcome.NOT_HOSTED):
            return self._not_ours(address, connection)
        if self._refuses_others(connection, resolution.domain):
            return refusal(Check.OTHER_DOMAIN, OTHER_DOMAIN, str(connection.domain))
        if outcome is Outcome.UNKNOWN_USER:
            return refusal(Check.UNKNOWN_USER, NO_SUCH_USER, resolution.domain)

        namespace = self.registry.lookup(resolution.domain)
        if namespace is None:
            return refusal(Check.UNAVAILABLE, LOCAL_ERROR, resolution.domain)
        found = self._domain_rules(namespace, resolution, envelope)
        if found is not None:
            return found
        recipient = Recipient(rcpt.strip(), address, namespace.domain)
        return Decision(
            Verdict.ACCEPT, Check.KNOWN_RECIPIENT, None, namespace.domain, recipient
        )

    def _not_ours(self, address: str, connection: Connection) -> Decision:
        """A recipient outside our domains, or one we cannot parse."""
        domain = address.rpartition("@")[2]
        try:
            domain = normalize_domain(domain)
            hosted = self.registry.lookup(domain)
        except InvalidNameError:
            hosted = None
        if hosted is not None:
            # A hosted domain, but a local part we could never store (RFC 3463
            # section 3.2, X.1.3 bad destination mailbox address syntax).
            return refusal(Check.BAD_ADDRESS, BAD_RECIPIENT, hosted.domain)
        if self._refuses_others(connection, domain):
            return refusal(Check.OTHER_DOMAIN, OTHER_DOMAIN, str(connection.domain))
        return Decision(Verdict.PASS, Check.NOT_HOSTED, domain=domain)

    def _refuses_others(self, connection: Connection, domain: str) -> bool:
        """Whether the connection's domain takes no mail for this other domain."""
        if connection.domain is None or domain == connection.domain:
            return False
        own = self.registry.lookup(connection.domain)
        return own is not None and not own.settings.accept_other_domains

    def _domain_rules(
        self, namespace: Namespace, resolution: Resolution, envelope: Envelope
    ) -> Decision | None:
        """The recipient domain's own rules, permanent failures first."""
        domain = namespace.domain
        settings = namespace.settings
        if _disabled(namespace, resolution):
            return refusal(Check.DISABLED, MAILBOX_DISABLED, domain)
        if sender_refused(envelope.mail_from, settings.refused_senders):
            return refusal(Check.REFUSED_SENDER, SENDER_REFUSED, domain)
        if _too_big(envelope.declared_size, settings.max_message_size):
            return refusal(Check.MESSAGE_SIZE, MESSAGE_TOO_BIG, domain)
        limit = settings.max_recipients
        if limit is not None and envelope.count_for(domain) >= limit:
            return refusal(Check.MAX_RECIPIENTS, TOO_MANY_RECIPIENTS, domain)
        return self._quota(resolution, envelope.declared_size or 0)

    def _quota(self, resolution: Resolution, size: int) -> Decision | None:
        """Whether a mailbox the recipient leads to is full (Maildir++ quota)."""
        for mailbox in resolution.mailboxes:
            namespace = self.registry.namespace(mailbox.domain)
            account = namespace.account(mailbox.account) if namespace else None
            if namespace is None or account is None:
                continue
            limits = QuotaLimits(account.quota_bytes, account.quota_messages)
            maildir = namespace.tree.maildir(mailbox.account)
            if would_exceed(maildir, limits, size):
                bounce = namespace.settings.over_quota_policy is OverQuota.BOUNCE
                reply = MAILBOX_FULL_PERM if bounce else MAILBOX_FULL
                return refusal(Check.QUOTA, reply, mailbox.domain)
        return None

    # End of message

    def check_eom(
        self, size: int, connection: Connection, envelope: Envelope
    ) -> Decision:
        """The real size against the limits of the connection and recipient domains."""
        domains = dict.fromkeys(r.domain for r in envelope.recipients)
        if connection.domain is not None:
            domains = {connection.domain: None, **domains}
        try:
            for domain in domains:
                namespace = self.registry.lookup(domain)
                limit = namespace.settings.max_message_size if namespace else None
                if _too_big(size, limit):
                    return refusal(Check.MESSAGE_SIZE, MESSAGE_TOO_BIG, domain)
        except MdmailError:
            return refusal(Check.UNAVAILABLE, LOCAL_ERROR, connection.domain or "")
        first = next(iter(domains), "")
        return Decision(Verdict.ACCEPT, Check.MESSAGE, domain=first)


def _too_big(size: int | None, limit: int | None) -> bool:
    return size is not None and limit is not None and size > limit


def _disabled(namespace: Namespace, resolution: Resolution) -> bool:
    if resolution.outcome is not Outcome.ACCOUNT:
        return False
    account = namespace.account(resolution.local)
    return account is not None and account.state == "disabled"
