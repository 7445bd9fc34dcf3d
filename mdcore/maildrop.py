"""A POP3 maildrop over one Maildir: exclusive use, stable UIDLs, deletion at QUIT.

RFC 1939 section 8 asks for an exclusive lock on the maildrop for the whole session;
an flock() on a file in the Maildir gives it, across processes and threads, and the
kernel drops it when a session dies. Messages are never moved or renamed while a
session lists them, and only a clean QUIT removes what DELE marked.
"""

import errno
import fcntl
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mdcore.errors import MdmailError
from mdcore.mailbox_reader import MessageInfo, base_name, list_messages, open_message
from mdcore.quota import record_removal

log = logging.getLogger(__name__)

LOCK_FILE = "mdmail-pop3.lock"
UIDL_MAP_FILE = "mdmail-uidl"

# RFC 1939 section 7: a unique-id is 1 to 70 characters from 0x21 to 0x7E.
_UIDL_TEXT = re.compile(r"[\x21-\x7e]{1,70}\Z")


class MaildropInUseError(MdmailError):
    """Another session holds the maildrop (RFC 2449 [IN-USE])."""


@dataclass(frozen=True)
class DropMessage:
    """One message as a POP3 session numbers and sizes it."""

    info: MessageInfo
    uidl: str

    @property
    def size(self) -> int:
        """The octets RETR sends (CRLF line ends, before byte-stuffing)."""
        return self.info.vsize


class Maildrop:
    """An open maildrop, locked for one session."""

    def __init__(
        self, maildir: Path, lock_fd: int, messages: list[DropMessage]
    ) -> None:
        self.maildir = maildir
        self._lock_fd: int | None = lock_fd
        self.messages = messages

    @classmethod
    def open(cls, maildir: Path) -> "Maildrop":
        """Lock and list a Maildir; raise MaildropInUseError if it is locked."""
        lock_fd = _lock(maildir)
        try:
            uidl_map = read_uidl_map(maildir)
            messages = [
                DropMessage(info, _uidl(info, uidl_map))
                for info in list_messages(maildir)
            ]
        except BaseException:
            os.close(lock_fd)
            raise
        return cls(maildir, lock_fd, messages)

    def read(self, index: int) -> BinaryIO:
        """Open message number index (0-based) for reading, as stored (LF ends)."""
        return open_message(self.maildir, self.messages[index].info.name)

    def delete(self, indexes: list[int]) -> int:
        """Remove the given messages; returns how many could not be removed."""
        failed = 0
        removed_bytes = removed = 0
        for index in indexes:
            info = self.messages[index].info
            try:
                _unlink_message(self.maildir, info)
            except OSError as error:
                log.error("cannot remove %s: %s", info.name, error.strerror)
                failed += 1
                continue
            removed += 1
            removed_bytes += info.size
        if removed:
            record_removal(self.maildir, removed_bytes, removed)
        return failed

    def close(self) -> None:
        """Release the lock."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _lock(maildir: Path) -> int:
    fd = os.open(maildir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise MaildropInUseError(f"maildrop {maildir} is in use") from None
        raise
    return fd


def _unlink_message(maildir: Path, info: MessageInfo) -> None:
    try:
        os.unlink(info.path)
        return
    except FileNotFoundError:
        pass
    # Another reader (Dovecot's IMAP on the same tree) may have moved it to cur/ or
    # changed its flags since the listing: find it by its base name.
    for subdir in ("cur", "new"):
        for name in os.listdir(maildir / subdir):
            if base_name(name) == info.uid:
                os.unlink(maildir / subdir / name)
                return


def _uidl(info: MessageInfo, uidl_map: dict[str, str]) -> str:
    mapped = uidl_map.get(info.uid)
    if mapped is not None:
        return mapped
    if _UIDL_TEXT.match(info.uid):
        return info.uid
    # A base name too long or with odd characters: a digest of it is as stable.
    return hashlib.sha256(info.uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def read_uidl_map(maildir: Path) -> dict[str, str]:
    """The UIDLs kept for imported messages: base name -> UIDL clients already saw."""
    try:
        text = (maildir / UIDL_MAP_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    table = {}
    for line in text.splitlines():
        name, _, uidl = line.partition(" ")
        if name and _UIDL_TEXT.match(uidl):
            table[name] = uidl
    return table


def uidls_from_dovecot(maildir: Path) -> dict[str, str]:
    """UIDLs Dovecot's POP3 gave (pop3_uidl_format %08Xu%08Xv) from dovecot-uidlist."""
    try:
        lines = (maildir / "dovecot-uidlist").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return {}
    if not lines:
        return {}
    validity = _uidvalidity(lines[0])
    table = {}
    for line in lines[1:]:
        uid, _, rest = line.partition(" ")
        _, colon, name = rest.rpartition(":")
        if uid.isdigit() and colon and name and validity is not None:
            # Dovecot 2.3 prints %08Xu%08Xv in lower-case hex, whatever the "X".
            table[name.split(":", 1)[0]] = f"{int(uid):08x}{validity:08x}"
    return table


def _uidvalidity(header: str) -> int | None:
    # Version 3 header: "3 V<uidvalidity> N<next uid> G<guid>".
    for field in header.split()[1:]:
        if field.startswith("V") and field[1:].isdigit():
            return int(field[1:])
    return None
