"""Changes to domains, accounts and aliases: the write side shared by CLI and web page.

Every change takes the lock of what it changes, rewrites whole files atomically and
then rewrites the serial file, so running servers see it within a second. Two admins,
or the CLI and the web page, therefore never lose each other's change, and a kill -9
leaves the old or the new file.
"""

import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from mdcore import schema
from mdcore.accounts import ACTIVE, Account, AccountFile
from mdcore.aliases import (
    CATCH_ALL,
    check_alias_name,
    check_target,
    format_aliases,
    format_domain_aliases,
    parse_aliases,
    parse_domain_aliases,
)
from mdcore.atomic import atomic_write, bump_serial, locked
from mdcore.errors import AdminError
from mdcore.layout import DomainTree, StateRoot, hosted_domains
from mdcore.logs import for_domain
from mdcore.loops import find_alias_loop
from mdcore.names import check_local_part, normalize_domain, parse_address
from mdcore.passwords import hash_password
from mdcore.settings import DomainSettings, load_settings, update_settings

log = logging.getLogger(__name__)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""


class Admin:
    """Administrative changes under one state root."""

    def __init__(self, root: StateRoot) -> None:
        self.root = root

    # Domains

    def domains(self) -> list[str]:
        """Hosted domains, sorted."""
        return hosted_domains(self.root)

    def tree(self, domain: str) -> DomainTree:
        """The tree of an existing hosted domain, or AdminError."""
        tree = self.root.tree(domain)
        if not tree.path.is_dir():
            raise AdminError(f"domain {tree.domain} is not hosted here")
        return tree

    def add_domain(
        self, domain: str, settings: dict[str, Any] | None = None
    ) -> DomainTree:
        """Create a domain's tree with its settings; refuse an existing name."""
        tree = self.root.tree(domain)
        checked = update_settings(DomainSettings(), settings or {})
        with self._server_lock():
            if tree.path.exists() or tree.domain in self._domain_alias_table():
                raise AdminError(f"domain {tree.domain} already exists")
            self._create_tree(tree, checked)
        log.info(
            "domain=%s event=domain-added", tree.domain, extra=for_domain(tree.domain)
        )
        return tree

    def _create_tree(self, tree: DomainTree, settings: DomainSettings) -> None:
        staging = tree.path.with_name(f".{tree.domain}.new")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o750)
        building = DomainTree(tree.domain, staging)
        for folder in (building.mail, building.logs):
            folder.mkdir(mode=0o750)
        _write_settings(building, settings)
        atomic_write(building.passwd, "", mode=0o640)
        atomic_write(building.aliases, "", mode=0o640)
        # The lock file is made here, not on first use, so that it gets the
        # domain's owner like every other file of the tree.
        atomic_write(building.lock, "", mode=0o600)
        _chown_tree(staging, settings.uid, settings.gid)
        # The tree appears whole or not at all.
        os.rename(staging, tree.path)

    def remove_domain(self, domain: str, purge: bool = False) -> Path | None:
        """Remove a domain: archive its tree (default) or delete it."""
        tree = self.tree(domain)
        with self._server_lock():
            aliases = self._domain_alias_table()
            pointing = sorted(
                alias for alias, target in aliases.items() if target == tree.domain
            )
            for alias in pointing:
                del aliases[alias]
            self._write_domain_aliases(aliases)
            archived = self._retire(tree.path, tree.domain, purge)
        log.info(
            "domain=%s event=domain-removed purge=%s",
            tree.domain,
            purge,
            extra=for_domain(tree.domain),
        )
        return archived

    def _retire(self, path: Path, label: str, purge: bool) -> Path | None:
        if purge:
            shutil.rmtree(path)
            return None
        self.root.archive.mkdir(mode=0o750, parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.root.archive / f"{label}.{stamp}.{os.getpid()}"
        os.rename(path, target)
        return target

    def settings(self, domain: str) -> DomainSettings:
        """A domain's current settings."""
        return load_settings(self.tree(domain).settings)

    def change_settings(self, domain: str, changes: dict[str, Any]) -> DomainSettings:
        """Apply validated changes to a domain's settings."""
        tree = self.tree(domain)
        with self._domain_lock(tree):
            settings = update_settings(load_settings(tree.settings), changes)
            _write_settings(tree, settings)
        log.info(
            "domain=%s event=settings-changed keys=%s",
            tree.domain,
            ",".join(changes),
            extra=for_domain(tree.domain),
        )
        return settings

    # Domain aliases

    def add_domain_alias(self, alias: str, target: str) -> None:
        """Make mail for alias domain go to hosted domain target."""
        alias_name = normalize_domain(alias)
        tree = self.tree(target)
        with self._server_lock():
            table = self._domain_alias_table()
            if self.root.tree(alias_name).path.exists() or alias_name in table:
                raise AdminError(f"domain {alias_name} already exists")
            table[alias_name] = tree.domain
            self._write_domain_aliases(table)
        log.info(
            "domain=%s event=domain-alias-added alias=%s",
            tree.domain,
            alias_name,
            extra=for_domain(tree.domain),
        )

    def remove_domain_alias(self, alias: str) -> None:
        """Stop accepting mail for an alias domain."""
        alias_name = normalize_domain(alias)
        with self._server_lock():
            table = self._domain_alias_table()
            if table.pop(alias_name, None) is None:
                raise AdminError(f"{alias_name} is not an alias domain")
            self._write_domain_aliases(table)
        log.info(
            "domain=%s event=domain-alias-removed",
            alias_name,
            extra=for_domain(alias_name),
        )

    def domain_aliases(self) -> dict[str, str]:
        """Alias domain -> hosted domain."""
        return self._domain_alias_table()

    def _domain_alias_table(self) -> dict[str, str]:
        return parse_domain_aliases(_read(self.root.domain_aliases))

    def _write_domain_aliases(self, table: dict[str, str]) -> None:
        atomic_write(self.root.domain_aliases, format_domain_aliases(table), mode=0o644)
        bump_serial(self.root.serial)

    # Accounts

    def accounts(self, domain: str) -> list[Account]:
        """A domain's accounts in file order."""
        return list(AccountFile(_read(self.tree(domain).passwd)))

    def account(self, domain: str, name: str) -> Account:
        """One account, or AdminError."""
        tree = self.tree(domain)
        found = AccountFile(_read(tree.passwd)).find(self._key(tree, name))
        if found is None:
            raise AdminError(f"no account {name}@{tree.domain}")
        return found

    def add_account(
        self,
        domain: str,
        name: str,
        password: str,
        quota_bytes: int | None = None,
        quota_messages: int | None = None,
        state: str = ACTIVE,
        hashed: bool = False,
    ) -> Account:
        """Create an account with its Maildir; refuse a duplicate or an alias name."""
        tree = self.tree(domain)
        key = self._key(tree, name)
        stored = password if hashed else hash_password(password)
        with self._domain_lock(tree):
            settings = load_settings(tree.settings)
            accounts = AccountFile(_read(tree.passwd))
            if accounts.find(key) is not None:
                raise AdminError(f"account {key}@{tree.domain} already exists")
            if key in parse_aliases(_read(tree.aliases)):
                raise AdminError(f"{key}@{tree.domain} is already an alias")
            account = Account(
                name=key,
                password=stored,
                uid=settings.uid,
                gid=settings.gid,
                quota_bytes=quota_bytes or settings.default_quota_bytes,
                quota_messages=quota_messages or settings.default_quota_messages,
                state=state,
            )
            accounts.put(account)
            _make_maildir(tree, key, settings)
            self._write(tree, tree.passwd, accounts.text(), settings)
        log.info(
            "domain=%s user=%s event=account-added",
            tree.domain,
            key,
            extra=for_domain(tree.domain),
        )
        return account

    def update_account(self, domain: str, name: str, **changes: Any) -> Account:
        """Change fields of an account (password must already be hashed here)."""
        tree = self.tree(domain)
        key = self._key(tree, name)
        with self._domain_lock(tree):
            accounts = AccountFile(_read(tree.passwd))
            current = accounts.find(key)
            if current is None:
                raise AdminError(f"no account {key}@{tree.domain}")
            account = replace(current, **changes)
            accounts.put(account)
            self._write(
                tree, tree.passwd, accounts.text(), load_settings(tree.settings)
            )
        log.info(
            "domain=%s user=%s event=account-changed fields=%s",
            tree.domain,
            key,
            ",".join(sorted(changes)),
            extra=for_domain(tree.domain),
        )
        return account

    def set_password(self, domain: str, name: str, password: str) -> Account:
        """Hash and store a new password."""
        return self.update_account(domain, name, password=hash_password(password))

    def remove_account(
        self, domain: str, name: str, purge: bool = False
    ) -> Path | None:
        """Remove an account; its mail is archived unless purge is set."""
        tree = self.tree(domain)
        key = self._key(tree, name)
        with self._domain_lock(tree):
            accounts = AccountFile(_read(tree.passwd))
            if accounts.find(key) is None:
                raise AdminError(f"no account {key}@{tree.domain}")
            accounts.remove(key)
            self._write(
                tree, tree.passwd, accounts.text(), load_settings(tree.settings)
            )
            home = tree.home(key)
            archived = None
            if home.exists():
                archived = self._retire(home, f"{tree.domain}.{key}", purge)
        log.info(
            "domain=%s user=%s event=account-removed purge=%s",
            tree.domain,
            key,
            purge,
            extra=for_domain(tree.domain),
        )
        return archived

    # Aliases

    def aliases(self, domain: str) -> dict[str, tuple[str, ...]]:
        """A domain's aliases."""
        return parse_aliases(_read(self.tree(domain).aliases))

    def add_alias(self, domain: str, name: str, targets: list[str]) -> tuple[str, ...]:
        """Add targets to an alias (created if new); refuse loops and account names."""
        tree = self.tree(domain)
        key = name if name == CATCH_ALL else self._key(tree, check_alias_name(name))
        checked = [check_target(target) for target in targets]
        if not checked:
            raise AdminError("an alias needs at least one target")
        with self._domain_lock(tree):
            if AccountFile(_read(tree.passwd)).find(key) is not None:
                raise AdminError(f"{key}@{tree.domain} is already an account")
            aliases = parse_aliases(_read(tree.aliases))
            merged = tuple(dict.fromkeys(aliases.get(key, ()) + tuple(checked)))
            aliases[key] = merged
            self._check_loops(tree.domain, aliases)
            self._write(
                tree,
                tree.aliases,
                format_aliases(aliases),
                load_settings(tree.settings),
            )
        log.info(
            "domain=%s user=%s event=alias-added targets=%s",
            tree.domain,
            key,
            ",".join(checked),
            extra=for_domain(tree.domain),
        )
        return merged

    def remove_alias(
        self, domain: str, name: str, targets: list[str] | None = None
    ) -> None:
        """Remove an alias, or only some of its targets."""
        tree = self.tree(domain)
        key = name if name == CATCH_ALL else self._key(tree, name)
        dropped = [check_target(target) for target in targets or ()]
        with self._domain_lock(tree):
            aliases = parse_aliases(_read(tree.aliases))
            if key not in aliases:
                raise AdminError(f"no alias {key} in {tree.domain}")
            missing = [target for target in dropped if target not in aliases[key]]
            if missing:
                raise AdminError(f"{key}@{tree.domain} has no target {missing[0]}")
            remaining = tuple(t for t in aliases[key] if dropped and t not in dropped)
            if remaining:
                aliases[key] = remaining
            else:
                del aliases[key]
            self._write(
                tree,
                tree.aliases,
                format_aliases(aliases),
                load_settings(tree.settings),
            )
        log.info(
            "domain=%s user=%s event=alias-removed",
            tree.domain,
            key,
            extra=for_domain(tree.domain),
        )

    def _check_loops(self, domain: str, changed: dict[str, tuple[str, ...]]) -> None:
        loop = find_alias_loop(self.root, domain, changed)
        if loop:
            raise AdminError("alias loop: " + " -> ".join(loop))

    # Shared steps

    def _key(self, tree: DomainTree, name: str) -> str:
        check_local_part(name)
        settings = load_settings(tree.settings)
        return name if settings.case_sensitive_local_parts else name.lower()

    def _write(
        self, tree: DomainTree, path: Path, text: str, settings: DomainSettings
    ) -> None:
        atomic_write(path, text, mode=0o640, uid=settings.uid, gid=settings.gid)
        bump_serial(self.root.serial)

    @contextmanager
    def _server_lock(self) -> Iterator[None]:
        self.root.path.mkdir(parents=True, exist_ok=True)
        self.root.domains.mkdir(mode=0o755, exist_ok=True)
        with locked(self.root.lock):
            yield
            bump_serial(self.root.serial)

    @contextmanager
    def _domain_lock(self, tree: DomainTree) -> Iterator[None]:
        gone = AdminError(f"domain {tree.domain} was removed meanwhile")
        with ExitStack() as stack:
            try:
                stack.enter_context(locked(tree.lock))
            except FileNotFoundError:
                raise gone from None
            if not tree.path.is_dir():
                raise gone
            yield


def _write_settings(tree: DomainTree, settings: DomainSettings) -> None:
    text = yaml.safe_dump(schema.dump(settings), sort_keys=True, allow_unicode=True)
    atomic_write(tree.settings, text, mode=0o640, uid=settings.uid, gid=settings.gid)


def _make_maildir(tree: DomainTree, key: str, settings: DomainSettings) -> None:
    maildir = tree.maildir(key)
    for folder in (
        tree.home(key),
        maildir,
        maildir / "tmp",
        maildir / "new",
        maildir / "cur",
    ):
        folder.mkdir(mode=0o700, exist_ok=True)
        if settings.uid is not None or settings.gid is not None:
            os.chown(folder, _id(settings.uid), _id(settings.gid))


def _chown_tree(path: Path, uid: int | None, gid: int | None) -> None:
    if uid is None and gid is None:
        return
    for folder, _dirs, files in os.walk(path):
        os.chown(folder, _id(uid), _id(gid))
        for name in files:
            os.chown(os.path.join(folder, name), _id(uid), _id(gid))


def _id(value: int | None) -> int:
    return -1 if value is None else value


def parse_target_domain(target: str) -> str | None:
    """The domain of an alias target, or None for a local part."""
    return parse_address(target).domain if "@" in target else None
