"""Where each file of the state root and of a domain's tree lives.

Every path is built from a validated name, and every domain path is checked to stay
inside that domain's own tree: this is the confinement the shared server model got from
chroot, enforced in code.
"""

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from mdcore.errors import InvalidNameError
from mdcore.names import check_local_part, normalize_domain

DOMAINS_DIR = "domains"
ARCHIVE_DIR = "archive"
STAGING_DIR = "tmp"
SERIAL_FILE = ".serial"
LOCK_FILE = ".lock"
DOMAIN_ALIASES_FILE = "domain-aliases"


@dataclass(frozen=True)
class StateRoot:
    """The top of all state: one tree per domain, plus server-wide files."""

    path: Path

    @property
    def domains(self) -> Path:
        """Folder holding one tree per hosted domain."""
        return self.path / DOMAINS_DIR

    @property
    def archive(self) -> Path:
        """Folder where removed domains and accounts are kept."""
        return self.path / ARCHIVE_DIR

    @property
    def staging(self) -> Path:
        """Folder for message bodies being received, before they reach a Maildir."""
        return self.path / STAGING_DIR

    @property
    def serial(self) -> Path:
        """File rewritten on every change, so servers notice changes with one stat."""
        return self.path / SERIAL_FILE

    @property
    def lock(self) -> Path:
        """Lock serialising server-wide changes (adding and removing domains)."""
        return self.path / LOCK_FILE

    @property
    def domain_aliases(self) -> Path:
        """Table of alias domains: one 'alias target' pair a line."""
        return self.path / DOMAIN_ALIASES_FILE

    def tree(self, domain: str) -> "DomainTree":
        """The tree of a domain (the name is validated and normalised)."""
        name = normalize_domain(domain)
        return DomainTree(name, self.domains / name)


@dataclass(frozen=True)
class DomainTree:
    """The files of one hosted domain."""

    domain: str
    path: Path

    @property
    def settings(self) -> Path:
        """The domain's settings.yaml."""
        return self.path / "settings.yaml"

    @property
    def passwd(self) -> Path:
        """The accounts, in Dovecot passwd-file format."""
        return self.path / "passwd"

    @property
    def aliases(self) -> Path:
        """The domain's aliases."""
        return self.path / "aliases"

    @property
    def lock(self) -> Path:
        """Lock serialising changes to this domain's files."""
        return self.path / LOCK_FILE

    @property
    def mail(self) -> Path:
        """Folder with one home folder per account."""
        return self.path / "mail"

    @property
    def logs(self) -> Path:
        """The domain's own log folder."""
        return self.path / "log"

    def home(self, local: str) -> Path:
        """The home folder of an account (its key in the namespace)."""
        check_local_part(local)
        return self.inside(self.mail / local)

    def maildir(self, local: str) -> Path:
        """The Maildir of an account, where Dovecot's maildir:~/Maildir looks too."""
        return _maildir(self, local)

    def inside(self, path: Path) -> Path:
        """Return path if it lies within this tree, else raise InvalidNameError."""
        top = os.path.abspath(self.path)
        target = os.path.abspath(path)
        if os.path.commonpath([top, target]) != top or target == top:
            raise InvalidNameError(f"path {path} is outside the tree of {self.domain}")
        return Path(target)


@functools.lru_cache(maxsize=1 << 16)
def _maildir(tree: DomainTree, local: str) -> Path:
    """An account's Maildir, worked out once: every delivery asks for it again."""
    # A pure function of the tree and the name, so a cached answer (or the
    # InvalidNameError, which is not cached and raised again) never goes stale.
    return tree.home(local) / "Maildir"


def hosted_domains(root: StateRoot) -> list[str]:
    """The hosted domains: folders under domains/ whose name is a normal domain."""
    try:
        entries = os.listdir(root.domains)
    except FileNotFoundError:
        return []
    return sorted(name for name in entries if _is_domain_dir(root.domains / name, name))


def _is_domain_dir(path: Path, name: str) -> bool:
    try:
        return normalize_domain(name) == name and path.is_dir()
    except InvalidNameError:
        return False
