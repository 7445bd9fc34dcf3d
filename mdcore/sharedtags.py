"""Fingerprints of recent keyed deliveries, in memory that forked workers share.

A delivery server whose workers share the listening sockets cannot tell
which worker a retry reaches. Each worker knows the dedupe tags it read from
a Maildir's file names and those it delivered itself; this table tells it
that another worker has delivered one since, so that it reads the Maildir
again before storing a second copy.

The table is an anonymous shared mapping made before the workers are
forked: a fixed number of 16-octet slots (fingerprint, time), probed in a
short run from the fingerprint's home slot. Looking up or adding costs one
hash and a few slot reads, no system call, where a marker file per delivery
cost a symlink (an inode) per recipient.

A slot is written without a lock, so a reader may see one half-written.
That is safe because a hit only makes the worker read the Maildir again: a
copy is skipped only when a message carrying the tag is really there. A
miss after a slot was taken over by newer deliveries lets a copy through;
it never loses one.
"""

import hashlib
import mmap
import struct
import time
from collections.abc import Callable

# 2**18 slots of 16 octets: 4 MiB, the last quarter million keyed deliveries.
DEFAULT_SLOTS = 1 << 18
# How many slots from its home a fingerprint may sit in.
_PROBES = 8
_SLOT = struct.Struct("<QQ")


class SharedTags:
    """A fixed-size table of (Maildir, tag) fingerprints with their times."""

    def __init__(
        self, slots: int = DEFAULT_SLOTS, clock: Callable[[], float] = time.time
    ) -> None:
        if slots < _PROBES or slots & (slots - 1):
            raise ValueError(f"slots must be a power of two >= {_PROBES}")
        self._mask = slots - 1
        self._clock = clock
        # MAP_SHARED | MAP_ANONYMOUS: a child forked after this writes the
        # same pages as its parent and siblings.
        self._map = mmap.mmap(-1, slots * _SLOT.size)

    def seen(self, maildir: str, tag: str, since: float) -> bool:
        """Tell whether tag was added for maildir at or after the time since."""
        wanted = _fingerprint(maildir, tag)
        for offset in self._run(wanted):
            fingerprint, stamp = _SLOT.unpack_from(self._map, offset)
            if fingerprint == wanted:
                return bool(stamp >= since)
        return False

    def add(self, maildir: str, tag: str) -> None:
        """Record that maildir got a message carrying tag, now."""
        wanted = _fingerprint(maildir, tag)
        chosen = -1
        oldest = 0
        for offset in self._run(wanted):
            fingerprint, stamp = _SLOT.unpack_from(self._map, offset)
            if fingerprint == wanted or fingerprint == 0:
                chosen = offset
                break
            if chosen == -1 or stamp < oldest:
                chosen, oldest = offset, stamp
        _SLOT.pack_into(self._map, chosen, wanted, int(self._clock()))

    def close(self) -> None:
        """Unmap the table in this process."""
        self._map.close()

    def _run(self, fingerprint: int) -> list[int]:
        """The offsets of the slots fingerprint may occupy, home slot first."""
        home = fingerprint & self._mask
        return [((home + step) & self._mask) * _SLOT.size for step in range(_PROBES)]


def _fingerprint(maildir: str, tag: str) -> int:
    """64 bits naming one tag in one Maildir; never 0, which marks a free slot."""
    material = f"{maildir}\0{tag}".encode("utf-8", "surrogateescape")
    digest = hashlib.blake2b(material, digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1
