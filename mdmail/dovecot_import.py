"""Import of a domain from a Dovecot passwd-file and its Maildirs.

Password hashes are kept as they are (Dovecot's schemes verify here too), and each
Maildir is copied whole, dovecot-uidlist included, so POP3 clients keep the UIDLs
they already saw.
"""

import logging
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mdcore.accounts import Account, parse_line
from mdcore.admin import Admin
from mdcore.atomic import atomic_write
from mdcore.errors import AdminError, InvalidNameError
from mdcore.maildrop import UIDL_MAP_FILE, uidls_from_dovecot
from mdcore.names import check_local_part, normalize_domain

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ImportedUser:
    """One user found in the Dovecot file, with the Maildir to copy."""

    account: Account
    maildir: Path | None


def read_users(passwd: Path, domain: str, template: str | None) -> list[ImportedUser]:
    """Users of domain in a Dovecot passwd-file ("user@domain" or plain "user")."""
    users = []
    for number, line in enumerate(_read_lines(passwd), 1):
        if not line.strip() or line.startswith("#"):
            continue
        try:
            user = _read_user(line, domain, template)
        except (ValueError, InvalidNameError) as error:
            raise AdminError(f"{passwd}: line {number}: {error}") from None
        if user is not None:
            users.append(user)
    return users


def _read_lines(passwd: Path) -> list[str]:
    try:
        return passwd.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise AdminError(f"{passwd}: cannot read: {error.strerror}") from None
    except UnicodeDecodeError:
        raise AdminError(f"{passwd}: not UTF-8 text") from None


def _read_user(line: str, domain: str, template: str | None) -> ImportedUser | None:
    account = parse_line(line)
    local, _, user_domain = account.name.partition("@")
    if user_domain and normalize_domain(user_domain) != domain:
        return None
    check_local_part(local)

    home = line.split(":")[5] if line.count(":") >= 5 else ""
    if template:
        source = Path(
            template.replace("%d", domain)
            .replace("%n", local)
            .replace("%u", f"{local}@{domain}")
        )
    elif home:
        source = Path(home) / "Maildir"
    else:
        source = None
    return ImportedUser(Account(**{**account.__dict__, "name": local}), source)


def import_domain(
    admin: Admin,
    domain: str,
    users: list[ImportedUser],
    progress: Progress | None = None,
) -> int:
    """Create the accounts and copy their mail; return how many messages were copied."""
    hosted = domain in admin.domains()
    _check_new(admin, domain, users, hosted)
    if not hosted:
        admin.add_domain(domain)
    total = sum(_count_messages(user.maildir) for user in users)
    copied = 0
    for user in users:
        account = user.account
        added = admin.add_account(
            domain,
            account.name,
            account.password,
            account.quota_bytes,
            account.quota_messages,
            hashed=True,
        )
        if user.maildir is not None and user.maildir.is_dir():
            # The stored name may differ in case from the file's: copy to its home.
            target = admin.tree(domain).maildir(added.name)
            copied = _copy_maildir(user.maildir, target, copied, total, progress)
            keep_pop3_uidls(target)
            _chown_copy(target, added)
        log.info("domain=%s user=%s event=account-imported", domain, added.name)
    return copied


def keep_pop3_uidls(maildir: Path) -> None:
    """Record the UIDLs Dovecot's POP3 showed, so clients download nothing again."""
    uidls = uidls_from_dovecot(maildir)
    if uidls:
        text = "".join(f"{name} {uidl}\n" for name, uidl in sorted(uidls.items()))
        atomic_write(maildir / UIDL_MAP_FILE, text, mode=0o600)


def _check_new(
    admin: Admin, domain: str, users: list[ImportedUser], hosted: bool
) -> None:
    # Refuse the whole import before the first change, not halfway through.
    taken: set[str] = set()
    folded = True
    if hosted:
        folded = not admin.settings(domain).case_sensitive_local_parts
        taken = {account.name for account in admin.accounts(domain)}
        taken |= set(admin.aliases(domain))
    for user in users:
        name = user.account.name.lower() if folded else user.account.name
        if name in taken:
            raise AdminError(f"{name}@{domain} already exists (or is there twice)")
        taken.add(name)


def _chown_copy(maildir: Path, account: Account) -> None:
    if account.uid is None and account.gid is None:
        return
    uid = -1 if account.uid is None else account.uid
    gid = -1 if account.gid is None else account.gid
    for folder, _dirs, files in os.walk(maildir):
        os.chown(folder, uid, gid)
        for name in files:
            os.chown(os.path.join(folder, name), uid, gid)


def _count_messages(maildir: Path | None) -> int:
    if maildir is None or not maildir.is_dir():
        return 0
    return sum(
        len(files)
        for folder, _dirs, files in os.walk(maildir)
        if os.path.basename(folder) in ("cur", "new")
    )


def _copy_maildir(
    source: Path, target: Path, copied: int, total: int, progress: Progress | None
) -> int:
    for folder, _dirs, files in os.walk(source):
        relative = Path(folder).relative_to(source)
        (target / relative).mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in files:
            shutil.copy2(Path(folder) / name, target / relative / name)
            if relative.name in ("cur", "new"):
                copied += 1
                if progress is not None:
                    progress(copied, total)
    return copied


def terminal_progress(done: int, total: int) -> None:
    """Draw a progress bar on stderr (used only when stderr is a terminal)."""
    width = 40
    filled = width * done // max(total, 1)
    sys.stderr.write(
        f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} messages"
    )
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()
