"""Resolution of an address to what it means in its domain's namespace.

This is the one function every component uses to ask "who is this address?": the LMTP
server before it delivers, the milter at RCPT time, the POP3 proxy and the web page at
login, and the CLI when it checks aliases for loops.
"""

import enum
import logging
from typing import NamedTuple

from mdcore.aliases import CATCH_ALL
from mdcore.errors import InvalidNameError
from mdcore.names import parse_address, split_address
from mdcore.namespace import Namespace, NamespaceUnavailableError, Registry

log = logging.getLogger(__name__)

# A chain of aliases deeper than this is treated as a loop (the CLI refuses loops,
# but a hand-edited file may still hold one).
MAX_ALIAS_DEPTH = 20


class Outcome(enum.Enum):
    """What an address turned out to be."""

    ACCOUNT = "account"
    ALIAS = "alias"
    NOT_HOSTED = "not-hosted"
    UNKNOWN_USER = "unknown-user"
    INVALID = "invalid"
    UNAVAILABLE = "unavailable"  # the domain's files cannot be read now: try later


class Mailbox(NamedTuple):
    """One account's mailbox: where a message for it is stored."""

    domain: str
    account: str


class Resolution(NamedTuple):
    """The answer for one address (a named tuple: built on every lookup, cheaply)."""

    outcome: Outcome
    domain: str = ""
    local: str = ""
    detail: str = ""
    mailboxes: tuple[Mailbox, ...] = ()
    external: tuple[str, ...] = ()
    reason: str = ""

    @property
    def deliverable(self) -> bool:
        """Whether the address leads to at least one mailbox or outside address."""
        return bool(self.mailboxes or self.external)


def resolve(registry: Registry, address: str) -> Resolution:
    """Resolve an envelope address (without angle brackets) in its namespace."""
    try:
        local, domain = split_address(address)
    except InvalidNameError as error:
        return Resolution(Outcome.INVALID, reason=str(error))

    try:
        namespace = registry.lookup(domain)
    except NamespaceUnavailableError:
        return Resolution(Outcome.UNAVAILABLE, domain=domain, local=local)
    if namespace is None:
        return Resolution(Outcome.NOT_HOSTED, domain=domain, local=local)

    # The common case, an account named as it is, answered without further calls:
    # this function runs for every RCPT of every component.
    key = local if namespace.case_sensitive else local.lower()
    if key in namespace.account_names:
        domain = namespace.domain
        return Resolution(Outcome.ACCOUNT, domain, key, "", (Mailbox(domain, key),))
    return _resolve_local(registry, namespace, local, 0)


def _resolve_in(registry: Registry, domain: str, local: str, depth: int) -> Resolution:
    try:
        namespace = registry.lookup(domain)
    except NamespaceUnavailableError:
        return Resolution(Outcome.UNAVAILABLE, domain=domain, local=local)
    if namespace is None:
        return Resolution(Outcome.NOT_HOSTED, domain=domain, local=local)
    return _resolve_local(registry, namespace, local, depth)


def _resolve_local(
    registry: Registry, namespace: Namespace, local: str, depth: int
) -> Resolution:
    domain = namespace.domain
    key = local if namespace.case_sensitive else local.lower()
    found = _lookup(registry, namespace, key, "", depth)
    if found is not None:
        return found

    base, detail = _split_detail(key, namespace.delimiters)
    if detail:
        found = _lookup(registry, namespace, base, detail, depth)
        if found is not None:
            return found

    if CATCH_ALL in namespace.aliases:
        return _expand(registry, namespace, CATCH_ALL, key, "", depth)
    return Resolution(Outcome.UNKNOWN_USER, domain=domain, local=key)


def _split_detail(key: str, delimiters: str) -> tuple[str, str]:
    # The first delimiter character splits "user+detail" (Postfix's
    # recipient_delimiter rule); an empty user part keeps the address whole.
    cut = min((key.find(char) for char in delimiters if char in key), default=-1)
    if cut <= 0:
        return key, ""
    return key[:cut], key[cut + 1 :]


def _lookup(
    registry: Registry, namespace: Namespace, key: str, detail: str, depth: int
) -> Resolution | None:
    if key in namespace.account_names:
        domain = namespace.domain
        return Resolution(Outcome.ACCOUNT, domain, key, detail, (Mailbox(domain, key),))
    if key in namespace.aliases:
        return _expand(registry, namespace, key, key, detail, depth)
    return None


def _expand(
    registry: Registry,
    namespace: Namespace,
    name: str,
    key: str,
    detail: str,
    depth: int,
) -> Resolution:
    mailboxes: dict[Mailbox, None] = {}
    external: dict[str, None] = {}
    for target in namespace.aliases[name]:
        _expand_target(registry, namespace.domain, target, depth, mailboxes, external)

    outcome = Outcome.ALIAS if mailboxes or external else Outcome.UNKNOWN_USER
    return Resolution(
        outcome,
        namespace.domain,
        key,
        detail,
        mailboxes=tuple(mailboxes),
        external=tuple(external),
    )


def _expand_target(
    registry: Registry,
    domain: str,
    target: str,
    depth: int,
    mailboxes: dict[Mailbox, None],
    external: dict[str, None],
) -> None:
    if depth >= MAX_ALIAS_DEPTH:
        log.warning("domain=%s alias chain too deep at %s (a loop?)", domain, target)
        return

    address = target if "@" in target else f"{target}@{domain}"
    try:
        parsed = parse_address(address)
    except InvalidNameError:
        log.warning("domain=%s alias target %r is invalid", domain, target)
        return

    inner = _resolve_in(registry, parsed.domain, parsed.local, depth + 1)
    if inner.outcome is Outcome.NOT_HOSTED:
        external[str(parsed)] = None
        return

    mailboxes.update(dict.fromkeys(inner.mailboxes))
    external.update(dict.fromkeys(inner.external))
    if not inner.deliverable:
        log.warning("domain=%s alias target %s leads nowhere", domain, address)
