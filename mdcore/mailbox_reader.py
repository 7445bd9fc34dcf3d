"""Listing and reading the messages of one Maildir, as the POP3 proxy needs them."""

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# The part of a Maildir file name after ":" holds flags ("2,S") that readers
# change; everything before it, the base name, never changes.
INFO_SEPARATOR = ":"

# "<seconds>.M<microseconds>..." at the start of our and Dovecot's names: the
# delivery time, used to number messages in the order they arrived.
_DELIVERY_TIME = re.compile(r"(\d+)(?:\.M(\d+))?")
# ",S=<stored size>" and ",W=<CRLF size>" in the base name, as we and Dovecot write.
_SIZE_FIELDS = re.compile(r",([SW])=(\d+)(?=[,:]|$)")
_CHUNK_SIZE = 1 << 16


@dataclass(frozen=True)
class MessageInfo:
    """One message file of a Maildir, with the sizes POP3 reports for it."""

    name: str
    directory: str
    size: int
    vsize: int
    uid: str

    @property
    def path(self) -> Path:
        """Where the file was when the Maildir was listed."""
        return Path(self.directory, self.name)

    @property
    def location(self) -> str:
        """The same as a string, without building a Path (a listing has many)."""
        return os.path.join(self.directory, self.name)


def base_name(name: str) -> str:
    """Return the part of a Maildir file name that flag changes leave alone."""
    return name.split(INFO_SEPARATOR, 1)[0]


def size_field(name: str, key: str) -> int | None:
    """Return the ",<key>=<n>" field (S= stored size, W= CRLF size) of a name."""
    match = re.search(rf",{key}=(\d+)(?=,|$)", base_name(name))
    return int(match[1]) if match else None


def list_messages(maildir: Path) -> list[MessageInfo]:
    """List the messages in new/ and cur/, oldest first, without moving any."""
    found: dict[str, MessageInfo] = {}

    # new/ before cur/: a file a reader moves from new/ to cur/ between the two
    # listings is then seen twice (and kept once) instead of not at all.
    for subdir in ("new", "cur"):
        directory = os.path.join(maildir, subdir)
        for name in _file_names(Path(directory)):
            info = _message_info(directory, name)
            if info is not None:
                found.setdefault(info.uid, info)
    return sorted(found.values(), key=_arrival_order)


def open_message(maildir: Path, name: str) -> BinaryIO:
    """Open a message by the name list_messages gave, even if its flags changed."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"not a Maildir message name: {name!r}")
    for subdir in ("cur", "new"):
        try:
            return open(maildir / subdir / name, "rb")
        except FileNotFoundError:
            continue
    return open(_find_by_base_name(maildir / "cur", base_name(name)), "rb")


def iter_crlf(stream: BinaryIO, chunk_size: int = _CHUNK_SIZE) -> Iterator[bytes]:
    """Yield a stored message with the CRLF line ends it had on the wire."""
    # Stored messages end lines with LF only, so every LF stands for a CRLF.
    while chunk := stream.read(chunk_size):
        yield chunk.replace(b"\n", b"\r\n")


def _file_names(directory: Path) -> list[str]:
    """Return the message names in one of new/ or cur/ (none if it is missing)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return [name for name in names if not name.startswith(".")]


def _message_info(directory: str, name: str) -> MessageInfo | None:
    """Build the record for one file, or None if it vanished meanwhile."""
    sizes = file_sizes(directory, name)
    if sizes is None:
        return None
    return MessageInfo(name, directory, sizes[0], sizes[1], base_name(name))


def file_sizes(directory: str, name: str) -> tuple[int, int] | None:
    """Stored and CRLF size of one message file; None if it vanished meanwhile."""
    # A large maildrop is listed at every login: the sizes come from the name
    # in one regex pass, and a file is opened only when its name lacks them.
    fields = dict(_SIZE_FIELDS.findall(base_name(name)))
    size = int(fields["S"]) if "S" in fields else None
    vsize = int(fields["W"]) if "W" in fields else None
    try:
        if size is None:
            size = os.stat(os.path.join(directory, name)).st_size
        if vsize is None:
            vsize = size + _count_line_ends(Path(directory, name))
    except FileNotFoundError:
        return None
    return size, vsize


def _count_line_ends(path: Path) -> int:
    """Count the LFs of a file: each becomes CRLF on the wire (one more octet)."""
    with open(path, "rb") as stream:
        return sum(
            chunk.count(b"\n") for chunk in iter(lambda: stream.read(_CHUNK_SIZE), b"")
        )


def _arrival_order(info: MessageInfo) -> tuple[int, int, str]:
    """Sort key of a record: arrival_key of its name."""
    return arrival_key(info.name)


def arrival_key(name: str) -> tuple[int, int, str]:
    """Sort key: delivery time from the name, then the name to break ties."""
    match = _DELIVERY_TIME.match(name)
    if match is None:
        return (0, 0, name)
    return (int(match[1]), int(match[2] or 0), name)


def _find_by_base_name(directory: Path, wanted: str) -> Path:
    """Find the file of cur/ whose base name is the one given."""
    for name in _file_names(directory):
        if base_name(name) == wanted:
            return directory / name
    raise FileNotFoundError(f"no message {wanted!r} in {directory}")
