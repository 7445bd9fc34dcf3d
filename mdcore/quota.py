"""Maildir++ quota: the maildirsize file, kept as Dovecot's maildir quota keeps it.

The file sits in the Maildir root. Its first line holds the limits
("<bytes>S,<count>C", 0 meaning unlimited); every further line is a change
"<bytes> <count>" (negative for removals), appended with O_APPEND in one write
so that concurrent writers never interleave. The usage is the sum of those
lines. The file is only a cache: when it is missing, broken, too long, written
for other limits, or claims the mailbox is full while it may be stale, it is
rebuilt from the sizes in the message file names.
"""

import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from mdcore.mailbox_reader import size_field

log = logging.getLogger(__name__)

MAILDIRSIZE = "maildirsize"

# Maildir++: a file longer than this has collected too many change lines, and
# one that says "over quota" but is older than this may be wrong: recalculate.
MAX_FILE_BYTES = 5120
STALE_SECONDS = 15 * 60

_LIMIT_ITEM = re.compile(r"(\d+)([SC])")
_CHANGE_LINE = re.compile(r"(-?\d+) +(-?\d+)")


@dataclass(frozen=True)
class QuotaLimits:
    """The limits of one mailbox; None means unlimited."""

    bytes: int | None = None
    messages: int | None = None

    def header(self) -> str:
        """Return the first line of maildirsize for these limits (no LF)."""
        items = []
        # Dovecot writes "0S" when nothing is limited, never an empty line.
        if self.bytes or not self.messages:
            items.append(f"{self.bytes or 0}S")
        if self.messages:
            items.append(f"{self.messages}C")
        return ",".join(items)

    @classmethod
    def parse(cls, line: str) -> "QuotaLimits | None":
        """Parse a maildirsize first line; None if it is not one."""
        values: dict[str, int | None] = {"S": None, "C": None}
        for item in line.split(","):
            match = _LIMIT_ITEM.fullmatch(item.strip())
            if match is None:
                return None
            values[match[2]] = int(match[1]) or None
        return cls(values["S"], values["C"])


@dataclass(frozen=True)
class Usage:
    """What a mailbox holds: octets as stored, and messages."""

    bytes: int
    messages: int


@dataclass(frozen=True)
class _FileState:
    """What a readable maildirsize file says."""

    limits: QuotaLimits
    usage: Usage
    change_lines: int
    mtime: float


def read_usage(maildir: Path, limits: QuotaLimits | None = None) -> Usage:
    """Return the usage, recalculating when the file is missing or untrustworthy.

    With limits None the limits written in the file are kept.
    """
    return _current_usage(maildir, limits, 0, 0)


def would_exceed(maildir: Path, limits: QuotaLimits, add_bytes: int) -> bool:
    """Tell whether one more message of add_bytes octets would break the limits."""
    if limits.bytes is None and limits.messages is None:
        return False
    usage = _current_usage(maildir, limits, add_bytes, 1)
    return _exceeds(usage, limits, add_bytes, 1)


def record_delivery(maildir: Path, size: int, limits: QuotaLimits) -> None:
    """Count one delivered message (already in new/) of size octets."""
    if not _append_change(maildir, size, 1):
        # No file yet: build it, which counts the message just delivered.
        recalculate(maildir, limits)


def record_removal(maildir: Path, size: int, count: int = 1) -> None:
    """Count count removed messages totalling size octets."""
    # Without a file there is nothing to correct: the next read rebuilds it.
    _append_change(maildir, -size, -count)


def recalculate(maildir: Path, limits: QuotaLimits) -> Usage:
    """Sum the messages of the Maildir and its folders, rewrite maildirsize."""
    usage = _sum_maildir(maildir)
    content = f"{limits.header()}\n{usage.bytes} {usage.messages}\n"
    try:
        _replace_file(maildir, content.encode("ascii"))
    except OSError:
        log.warning("maildir=%s quota file not rewritten", maildir, exc_info=True)
    log.debug(
        "maildir=%s quota recalculated size=%d count=%d",
        maildir,
        usage.bytes,
        usage.messages,
    )
    return usage


def _current_usage(
    maildir: Path, limits: QuotaLimits | None, add_bytes: int, add_count: int
) -> Usage:
    """Read the file; recalculate instead when Maildir++ says it cannot be trusted."""
    state = _read_file(maildir)
    if state is None:
        return recalculate(maildir, limits or QuotaLimits())
    if limits is not None and limits != state.limits:
        return recalculate(maildir, limits)
    if _exceeds(state.usage, state.limits, add_bytes, add_count) and _doubtful(state):
        return recalculate(maildir, state.limits)
    return state.usage


def _doubtful(state: _FileState) -> bool:
    """Tell whether a file that says "full" may be wrong: changed or old."""
    too_old = time.time() - state.mtime > STALE_SECONDS
    return state.change_lines > 1 or too_old


def _exceeds(usage: Usage, limits: QuotaLimits, add_bytes: int, add_count: int) -> bool:
    """Tell whether usage plus the addition is over either limit."""
    over_bytes = limits.bytes is not None and usage.bytes + add_bytes > limits.bytes
    over_count = (
        limits.messages is not None and usage.messages + add_count > limits.messages
    )
    return over_bytes or over_count


def _read_file(maildir: Path) -> _FileState | None:
    """Parse maildirsize; None when it is missing, too long or broken."""
    try:
        with open(maildir / MAILDIRSIZE, "rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
            mtime = os.fstat(stream.fileno()).st_mtime
    except FileNotFoundError:
        return None
    if len(data) > MAX_FILE_BYTES:
        return None
    try:
        return _parse(data.decode("ascii"), mtime)
    except UnicodeDecodeError:
        return None


def _parse(text: str, mtime: float) -> _FileState | None:
    """Parse the limits line and the change lines; None on anything unexpected."""
    # A last line without LF is an append still being written: leave it out.
    lines = text.split("\n")[:-1]
    if not lines or (limits := QuotaLimits.parse(lines[0])) is None:
        return None
    changes = [_CHANGE_LINE.fullmatch(line.strip()) for line in lines[1:]]
    if not changes or None in changes:
        return None
    total_bytes = sum(int(match[1]) for match in changes if match)
    total_count = sum(int(match[2]) for match in changes if match)
    if total_bytes < 0 or total_count < 0:
        return None
    return _FileState(limits, Usage(total_bytes, total_count), len(changes), mtime)


def _append_change(maildir: Path, size: int, count: int) -> bool:
    """Append one change line in a single write; False if there is no file."""
    line = f"{size} {count}\n".encode("ascii")
    try:
        fd = os.open(maildir / MAILDIRSIZE, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        # Limitation: a rewrite that renames a new file into place just before
        # this write loses this line until the next recalculation (Maildir++
        # accepts that); only a lock that every writer honours would lift it.
        os.write(fd, line)
    finally:
        os.close(fd)
    return True


def _sum_maildir(maildir: Path) -> Usage:
    """Add up the messages of INBOX and of every Maildir++ folder (".name")."""
    total_bytes = total_count = 0
    for folder in [maildir, *_folders(maildir)]:
        for subdir in ("new", "cur"):
            for size in _message_sizes(folder / subdir):
                total_bytes += size
                total_count += 1
    return Usage(total_bytes, total_count)


def _folders(maildir: Path) -> list[Path]:
    """Return the Maildir++ folders: directories named ".<name>" in the root."""
    try:
        entries = list(os.scandir(maildir))
    except FileNotFoundError:
        return []
    return [
        Path(entry.path)
        for entry in entries
        if entry.name.startswith(".") and entry.name != ".." and entry.is_dir()
    ]


def _message_sizes(directory: Path) -> list[int]:
    """Return the size of each message: S= from its name, else from stat."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    sizes = []
    for name in names:
        if name.startswith("."):
            continue
        size = size_field(name, "S")
        if size is None:
            size = _file_size(directory / name)
        if size is not None:
            sizes.append(size)
    return sizes


def _file_size(path: Path) -> int | None:
    """Return a file's size, or None if it was moved or removed meanwhile."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _replace_file(maildir: Path, content: bytes) -> None:
    """Write maildirsize anew through tmp/ and rename it into place."""
    temporary = maildir / "tmp" / f"{MAILDIRSIZE}.{os.getpid()}.{secrets.token_hex(6)}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as stream:
            _give_to_maildir_owner(stream.fileno(), maildir)
            stream.write(content)
        os.rename(temporary, maildir / MAILDIRSIZE)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _give_to_maildir_owner(fd: int, maildir: Path) -> None:
    """When running as root, let the file belong to whoever owns the Maildir."""
    # Dovecot runs as the mailbox owner and must be able to read and replace it.
    if os.geteuid() == 0:
        owner = os.stat(maildir)
        os.fchown(fd, owner.st_uid, owner.st_gid)
