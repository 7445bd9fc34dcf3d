"""Accounts of one domain, kept in a file Dovecot's passwd-file driver reads as it is.

Each line is ``user:{SCHEME}hash:uid:gid:gecos:home:shell:extra`` where extra holds
space-separated ``key=value`` fields. The home field is left empty: Dovecot derives it
from the tree (see dovecot/ in the repository), and so do we, so the file carries no
paths that could point outside the tree.
"""

import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from mdcore.errors import AdminError

log = logging.getLogger(__name__)

# Dovecot's quota plugin reads these userdb extra fields (quota_rule, quota_rule2);
# the value after "storage=" is in bytes when it carries the "B" suffix.
QUOTA_STORAGE_FIELD = "userdb_quota_rule"
QUOTA_MESSAGES_FIELD = "userdb_quota_rule2"

# Our own extra field: "pending" accounts wait for approval, "disabled" cannot log in.
STATE_FIELD = "mdmail_state"
ACTIVE = "active"
PENDING = "pending"
DISABLED = "disabled"


@dataclass(frozen=True)
class Account:
    """One account of a domain, as stored in its passwd file."""

    name: str
    password: str
    uid: int | None = None
    gid: int | None = None
    quota_bytes: int | None = None
    quota_messages: int | None = None
    state: str = ACTIVE
    extra: tuple[tuple[str, str], ...] = field(default=())

    @property
    def can_log_in(self) -> bool:
        """Whether the account may authenticate (approved and not disabled)."""
        return self.state == ACTIVE


def parse_line(line: str) -> Account:
    """Parse one passwd-file line; raise ValueError when it is malformed."""
    fields = line.rstrip("\n").split(":", 7)
    if len(fields) < 2 or not fields[0]:
        raise ValueError("expected at least user:password")
    fields += [""] * (8 - len(fields))
    name, password, uid, gid, _gecos, _home, _shell, extra_text = fields

    account = Account(
        name=name,
        password=password,
        uid=_int_or_none(uid),
        gid=_int_or_none(gid),
    )
    return _apply_extra(account, extra_text)


def _int_or_none(text: str) -> int | None:
    return int(text) if text else None


def _apply_extra(account: Account, text: str) -> Account:
    quota_bytes = quota_messages = None
    state = ACTIVE
    others: list[tuple[str, str]] = []
    for item in text.split():
        key, _, value = item.partition("=")
        if key == QUOTA_STORAGE_FIELD and value.startswith("*:storage="):
            quota_bytes = _parse_size(value.removeprefix("*:storage="))
        elif key == QUOTA_MESSAGES_FIELD and value.startswith("*:messages="):
            quota_messages = int(value.removeprefix("*:messages="))
        elif key == STATE_FIELD:
            state = value
        else:
            others.append((key, value))
    return replace(
        account,
        quota_bytes=quota_bytes or None,
        quota_messages=quota_messages or None,
        state=state,
        extra=tuple(others),
    )


_UNITS = {"B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def _parse_size(text: str) -> int:
    unit = text[-1:].upper()
    if unit in _UNITS:
        return int(text[:-1]) * _UNITS[unit]
    # Dovecot reads a quota storage value without a unit as KiB.
    return int(text) * 1024


def format_line(account: Account) -> str:
    """Return the passwd-file line of an account (without the newline)."""
    extra = [f"{key}={value}" for key, value in account.extra]
    if account.quota_bytes:
        extra.append(f"{QUOTA_STORAGE_FIELD}=*:storage={account.quota_bytes}B")
    if account.quota_messages:
        extra.append(f"{QUOTA_MESSAGES_FIELD}=*:messages={account.quota_messages}")
    if account.state != ACTIVE:
        extra.append(f"{STATE_FIELD}={account.state}")

    uid = "" if account.uid is None else str(account.uid)
    gid = "" if account.gid is None else str(account.gid)
    return f"{account.name}:{account.password}:{uid}:{gid}::::{' '.join(extra)}"


def check_password_field(password: str) -> None:
    """Refuse a stored hash that would break the line format."""
    if ":" in password.split("}", 1)[-1] or "\n" in password:
        raise AdminError("a password hash may not contain ':' or a line break")


class AccountFile:
    """The lines of a passwd file, kept in order with comments, for editing."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def __iter__(self) -> Iterator[Account]:
        for number, line in enumerate(self.lines, 1):
            account = _parse_or_warn(line, number)
            if account is not None:
                yield account

    def find(self, name: str) -> Account | None:
        """The account with this exact name, if any."""
        return next((account for account in self if account.name == name), None)

    def put(self, account: Account) -> None:
        """Replace the account of that name, or append it."""
        check_password_field(account.password)
        line = format_line(account)
        for index, existing in enumerate(self.lines):
            if _line_name(existing) == account.name:
                self.lines[index] = line
                return
        self.lines.append(line)

    def remove(self, name: str) -> None:
        """Drop the account of that name."""
        self.lines = [line for line in self.lines if _line_name(line) != name]

    def text(self) -> str:
        """The file's new contents."""
        return "".join(line + "\n" for line in self.lines)


def _line_name(line: str) -> str | None:
    if not line.strip() or line.lstrip().startswith("#"):
        return None
    return line.split(":", 1)[0]


def _parse_or_warn(line: str, number: int) -> Account | None:
    if _line_name(line) is None:
        return None
    try:
        return parse_line(line)
    except ValueError:
        log.warning("passwd line %d is malformed and was skipped", number)
        return None


# The user field of each line that is not blank or a comment.
_NAME_FIELD = re.compile(r"^[ \t]*([^#:\s][^:\n]*):", re.MULTILINE)


def account_names(text: str) -> Iterable[str]:
    """The account names in a passwd file's text, quickly (no full parse)."""
    return _NAME_FIELD.findall(text)
