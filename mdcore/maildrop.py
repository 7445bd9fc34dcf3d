"""A POP3 maildrop over one Maildir: exclusive use, stable UIDLs, deletion at QUIT.

RFC 1939 section 8 asks for an exclusive lock on the maildrop for the whole session;
an flock() on a file in the Maildir gives it, across processes and threads, and the
kernel drops it when a session dies. Messages are never moved or renamed while a
session lists them, and only a clean QUIT removes what DELE marked.
"""

import errno
import fcntl
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, overload

from mdcore.errors import MdmailError
from mdcore.listing import (
    UIDL_TEXT,
    Listing,
    load_listing,
    save_listing,
    scan_maildir,
)
from mdcore.mailbox_reader import MessageInfo, base_name, open_message
from mdcore.quota import record_removal

log = logging.getLogger(__name__)

LOCK_FILE = "mdmail-pop3.lock"
# preadv2(2) that takes only what the page cache holds (Linux 4.14 and later).
_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)
UIDL_MAP_FILE = "mdmail-uidl"


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

    def __init__(self, maildir: Path, lock_fd: int, listing: Listing) -> None:
        self.maildir = maildir
        self._lock_fd: int | None = lock_fd
        # Messages are opened relative to the Maildir: the kernel then walks
        # two names per RETR, not the whole path of the tree.
        self._dir_fd: int | None = os.open(
            maildir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        )
        self.listing = listing
        self.messages = _Messages(maildir, listing)

    @classmethod
    def open(cls, maildir: Path) -> "Maildrop":
        """Lock and list a Maildir; raise MaildropInUseError if it is locked."""
        lock_fd = _lock(maildir)
        try:
            listing = LISTINGS.listing(maildir)
            return cls(maildir, lock_fd, listing)
        except BaseException:
            os.close(lock_fd)
            raise

    def read(self, index: int) -> BinaryIO:
        """Open message number index (0-based) for reading, as stored (LF ends)."""
        info = self.messages[index].info
        try:
            # Where the listing saw it: right unless a reader moved or flagged it.
            return open(info.location, "rb")
        except FileNotFoundError:
            return open_message(self.maildir, info.name)

    def read_whole(self, index: int) -> bytes:
        """The whole of message number index, as stored, in one read (small ones)."""
        try:
            fd = self._open_listed(index)
        except FileNotFoundError:
            name = self.listing.locations[index][4:]
            with open_message(self.maildir, name) as stream:
                return stream.read()
        try:
            return _read_to_end(fd, self.listing.sizes[index])
        finally:
            os.close(fd)

    def read_cached(self, index: int) -> bytes | bytearray | None:
        """The whole of message number index if the page cache holds all of it.

        preadv2(2) with RWF_NOWAIT takes only what is cached and never waits
        for the disk, so an event loop may call this; None means "read it in a
        worker" (read_whole). Where the flag is missing, this reads as
        read_whole does, waiting for the disk if it must.
        """
        if not _NOWAIT:
            return self.read_whole(index)
        try:
            fd = self._open_listed(index)
        except FileNotFoundError:
            return None
        try:
            return _read_if_cached(fd, self.listing.sizes[index])
        finally:
            os.close(fd)

    def _open_listed(self, index: int) -> int:
        """Open message number index where the listing saw it (new/ or cur/)."""
        # Straight from the columns: RETR of many small messages is the hot path.
        if self._dir_fd is None:
            raise ValueError("the maildrop is closed")
        location = self.listing.locations[index]
        return os.open(location, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._dir_fd)

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
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


class _Messages(Sequence[DropMessage]):
    """The listing's messages as records, each made when it is asked for."""

    def __init__(self, maildir: Path, listing: Listing) -> None:
        self._maildir = os.fspath(maildir)
        self._listing = listing

    def __len__(self) -> int:
        return len(self._listing)

    @overload
    def __getitem__(self, index: int) -> DropMessage: ...

    @overload
    def __getitem__(self, index: slice) -> list[DropMessage]: ...

    def __getitem__(self, index: int | slice) -> DropMessage | list[DropMessage]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        listing = self._listing
        subdir, _, name = listing.locations[index].partition("/")
        info = MessageInfo(
            name,
            os.path.join(self._maildir, subdir),
            listing.sizes[index],
            listing.vsizes[index],
            base_name(name),
        )
        return DropMessage(info, listing.uidls[index])


def _read_if_cached(fd: int, expected: int) -> bytearray | None:
    """The file's octets if all are in the page cache and it is the size its
    name says; else None (the caller reads it in a worker)."""
    # Read into a buffer of the expected size, plus one octet that must stay
    # unread: a longer file is no message to send from here.
    message = bytearray(expected)
    try:
        got = os.preadv(fd, [message, bytearray(1)], 0, _NOWAIT)
    except BlockingIOError:
        return None
    except OSError as error:
        # A filesystem without RWF_NOWAIT support answers EOPNOTSUPP.
        if error.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            return None
        raise
    # Partly cached, or not the size its name says: the worker sorts it out.
    return message if got == expected else None


def _read_to_end(fd: int, expected: int) -> bytes:
    """Read a file to its end; one read(2) when its size is what the name says."""
    data = os.read(fd, expected + 1)
    if len(data) <= expected:
        return data
    parts = [data]
    while chunk := os.read(fd, 1 << 16):
        parts.append(chunk)
    return b"".join(parts)


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


class ListingCache:
    """The last listing of each Maildir, reused while its folders are unchanged.

    A listing is kept with the modification times of new/, cur/ and the UIDL
    map, and is used again without reading the folders only while all three
    are the same and were already old when it was taken: a change within the
    file system's timestamp tick of the listing could otherwise leave the
    times equal (Dovecot's Maildir sync distrusts recent times for the same
    reason). Otherwise the folders are read and the listing is brought up to
    date from the kept one (mdcore.listing); with none in memory, from the one
    written to the Maildir.
    """

    def __init__(
        self, max_messages: int = 200_000, settle_ns: int = 2_000_000_000
    ) -> None:
        # Bounded by messages, not maildrops: a listing costs about 150 bytes a
        # message, so the default holds some 30 MB at most.
        self._max_messages = max_messages
        self._held = 0
        self._settle_ns = settle_ns
        self._guard = threading.Lock()
        self._entries: OrderedDict[str, Listing] = OrderedDict()

    def listing(self, maildir: Path) -> Listing:
        """The listing of maildir: the kept one if still valid, else a fresh one."""
        key = os.fspath(maildir)
        stamps = _stamps(key)
        with self._guard:
            kept = self._entries.get(key)
            if kept is not None:
                self._entries.move_to_end(key)
        if kept is None:
            kept = load_listing(maildir)
        settled = time.time_ns() - max(stamps) > self._settle_ns
        if kept.stamps == stamps and settled:
            self._keep(key, kept)
            return kept
        fresh = scan_maildir(maildir, stamps, read_uidl_map(maildir), kept)
        if settled:
            self._keep(key, fresh)
            save_listing(maildir, fresh)
        return fresh

    def messages(self, maildir: Path) -> Sequence[DropMessage]:
        """The listing of maildir as records."""
        return _Messages(maildir, self.listing(maildir))

    def _keep(self, key: str, kept: Listing) -> None:
        """Hold a listing, dropping the least recently used ones beyond the bound."""
        if len(kept) > self._max_messages:
            return
        with self._guard:
            old = self._entries.pop(key, None)
            self._held -= len(old) if old is not None else 0
            self._entries[key] = kept
            self._held += len(kept)
            while self._held > self._max_messages:
                _, dropped = self._entries.popitem(last=False)
                self._held -= len(dropped)


def _stamps(maildir: str) -> tuple[int, ...]:
    """The modification times of new/, cur/ and the UIDL map (0 if missing)."""
    stamps = []
    for name in ("new", "cur", UIDL_MAP_FILE):
        try:
            stamps.append(os.stat(os.path.join(maildir, name)).st_mtime_ns)
        except FileNotFoundError:
            stamps.append(0)
    return tuple(stamps)


LISTINGS = ListingCache()


def read_uidl_map(maildir: Path) -> dict[str, str]:
    """The UIDLs kept for imported messages: base name -> UIDL clients already saw."""
    try:
        text = (maildir / UIDL_MAP_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    table = {}
    for line in text.splitlines():
        name, _, uidl = line.partition(" ")
        if name and UIDL_TEXT.match(uidl):
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
