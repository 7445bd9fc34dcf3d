"""The loaded namespace of one domain, and the registry of all hosted domains.

A Registry is what every server holds: it loads a domain's namespace the first time
the domain is asked for, and notices admin changes through the state root's serial
file, which every change rewrites. It looks at that file at most every
``refresh_interval`` seconds, so a change is seen within that time without a restart,
and a hot path costs no system call.
"""

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from mdcore import accounts
from mdcore.aliases import Aliases, parse_aliases, parse_domain_aliases
from mdcore.errors import MdmailError
from mdcore.layout import DomainTree, StateRoot, hosted_domains
from mdcore.settings import DomainSettings, load_settings

log = logging.getLogger(__name__)

# Identity of a file's version: (inode, size, mtime in ns); None when missing.
Stamp = tuple[int, int, int] | None


def _stamp(path: Path) -> Stamp:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""


@dataclass
class Namespace:
    """Everything needed to resolve addresses in one domain."""

    tree: DomainTree
    settings: DomainSettings
    # A dict, not a set: CPython's garbage collector never tracks a dict that holds
    # only strings, so a million names loaded cost no time in collections.
    account_names: dict[str, None]
    aliases: Aliases
    stamps: tuple[Stamp, Stamp, Stamp]
    _accounts: dict[str, accounts.Account] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # Plain attributes, read on every resolution.
        self.domain = self.tree.domain
        self.case_sensitive = self.settings.case_sensitive_local_parts
        self.delimiters = self.settings.recipient_delimiter

    def account(self, name: str) -> accounts.Account | None:
        """The full account record (password, quota), read on first use."""
        if self._accounts is None:
            records = accounts.AccountFile(_read(self.tree.passwd))
            self._accounts = {record.name: record for record in records}
        return self._accounts.get(name)


def load_namespace(tree: DomainTree) -> Namespace:
    """Read a domain's settings, account names and aliases from its tree."""
    stamps = (_stamp(tree.settings), _stamp(tree.passwd), _stamp(tree.aliases))
    settings = load_settings(tree.settings)
    names = dict.fromkeys(accounts.account_names(_read(tree.passwd)))
    aliases = parse_aliases(_read(tree.aliases))
    return Namespace(tree, settings, names, aliases, stamps)


def _is_current(namespace: Namespace) -> bool:
    tree = namespace.tree
    stamps = (_stamp(tree.settings), _stamp(tree.passwd), _stamp(tree.aliases))
    return stamps == namespace.stamps


class NamespaceUnavailableError(MdmailError):
    """A hosted domain's files cannot be read now: answer a temporary failure."""


class Registry:
    """All hosted domains under one state root, loaded lazily and kept fresh."""

    def __init__(self, root: StateRoot, refresh_interval: float = 0.5) -> None:
        self.root = root
        self.refresh_interval = refresh_interval
        self._lock = threading.Lock()
        self._namespaces: dict[str, Namespace] = {}
        self._stale: set[str] = set()
        self._domain_aliases: dict[str, str] = {}
        self._serial: Stamp = None
        self._checked_at = -1.0
        self._reload_server_wide()

    def canonical(self, domain: str) -> str | None:
        """The hosted domain that mail for domain goes to, or None if not hosted."""
        self._refresh()
        target = self._domain_aliases.get(domain)
        if target is not None:
            return target
        if domain in self._namespaces or self.root.tree(domain).path.is_dir():
            return domain
        return None

    def lookup(self, domain: str) -> Namespace | None:
        """The namespace mail for domain goes to (alias domains followed), or None."""
        if time.monotonic() - self._checked_at >= self.refresh_interval:
            self._refresh()
        current = self._namespaces.get(self._domain_aliases.get(domain, domain))
        if current is not None and current.domain not in self._stale:
            return current
        hosted = self.canonical(domain)
        return None if hosted is None else self.namespace(hosted)

    def namespace(self, domain: str) -> Namespace | None:
        """The loaded namespace of a hosted domain (A-label), or None."""
        self._refresh()
        current = self._namespaces.get(domain)
        if current is not None and domain not in self._stale:
            return current
        return self._load(domain)

    def domains(self) -> list[str]:
        """The names of all hosted domains, sorted."""
        return hosted_domains(self.root)

    def domain_aliases(self) -> dict[str, str]:
        """Alias domain -> hosted domain."""
        self._refresh()
        return dict(self._domain_aliases)

    def invalidate(self) -> None:
        """Forget every check, so the next lookup reads from disk."""
        with self._lock:
            self._checked_at = -1.0
            self._serial = ("forced",)  # type: ignore[assignment]

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < self.refresh_interval:
            return
        with self._lock:
            self._checked_at = now
            serial = _stamp(self.root.serial)
            if serial == self._serial:
                return
            self._serial = serial
            self._stale = set(self._namespaces)
            self._reload_server_wide()

    def _reload_server_wide(self) -> None:
        self._domain_aliases = parse_domain_aliases(_read(self.root.domain_aliases))

    def _load(self, domain: str) -> Namespace | None:
        tree = self.root.tree(domain)
        with self._lock:
            current = self._namespaces.get(domain)
            if current is not None and _is_current(current):
                self._stale.discard(domain)
                return current
            if not tree.path.is_dir():
                self._namespaces.pop(domain, None)
                return None
            return self._load_locked(tree)

    def _load_locked(self, tree: DomainTree) -> Namespace | None:
        try:
            namespace = load_namespace(tree)
        except (MdmailError, OSError) as error:
            # A broken file keeps the last good namespace until the next change; with
            # none, callers answer a temporary failure, never "no such domain".
            log.error("domain=%s status=load-failed (%s)", tree.domain, error)
            self._stale.discard(tree.domain)
            previous = self._namespaces.get(tree.domain)
            if previous is None:
                raise NamespaceUnavailableError(tree.domain) from error
            return previous
        self._namespaces[tree.domain] = namespace
        self._stale.discard(tree.domain)
        return namespace
