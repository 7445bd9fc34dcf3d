"""The maildrop as one POP3 session sees it: the listing, deletion marks and counts."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

# RFC 1939 section 7: a unique-id is 1 to 70 characters in 0x21 to 0x7E; the
# listing's unique-ids are checked together, one per line of one string.
_UNIQUE_IDS = re.compile(r"[\x21-\x7e]{1,70}(?:\n[\x21-\x7e]{1,70})*")


class MessageInfo(NamedTuple):
    """One message of the listing: its size on the wire and its unique-id.

    `size` is the exact size on the wire (RFC 1939 section 11): every line
    end counted as CRLF, dot-stuffing not counted; `wire_size()` in
    pop3proxy.content computes it. `uid` is the UIDL unique-id. The values
    are checked by the Maildrop that holds them.
    """

    size: int
    uid: str


class Maildrop:
    """The messages of a maildrop at login, numbered 1, 2, ... in this order.

    Held as two columns, sizes and unique-ids: a login into a large maildrop
    then makes no object per message.
    """

    def __init__(self, sizes: Sequence[int] = (), uids: Sequence[str] = ()) -> None:
        """Check and keep the columns; ValueError if any value is not allowed."""
        if len(sizes) != len(uids):
            raise ValueError("a size and a unique-id for every message")
        if sizes and min(sizes) < 0:
            raise ValueError("message size must not be negative")
        if uids and not _UNIQUE_IDS.fullmatch("\n".join(uids)):
            raise ValueError("unique-ids must be 1-70 printable ASCII characters")
        # RFC 1939 section 7: no two messages share a unique-id.
        if len(set(uids)) != len(uids):
            raise ValueError("unique-ids must be unique within the maildrop")
        self.sizes = tuple(sizes)
        self.uids = tuple(uids)

    @classmethod
    def of(cls, messages: Sequence[tuple[int, str]]) -> Maildrop:
        """Build a maildrop from (size, uid) pairs."""
        return cls([size for size, _ in messages], [uid for _, uid in messages])

    def __len__(self) -> int:
        return len(self.sizes)


@dataclass(frozen=True)
class MessageRef:
    """A message named by its number in this session and its unique-id."""

    number: int
    uid: str


@dataclass(frozen=True)
class SessionStats:
    """What a session did, for the logout log line (counts and octets)."""

    messages: int = 0
    size: int = 0
    retr_count: int = 0
    retr_octets: int = 0
    top_count: int = 0
    top_octets: int = 0
    deleted: int = 0

    def summary(self) -> str:
        """The log form: "top=0/0, retr=3/318, del=0/3, size=273".

        `del` is messages removed in the UPDATE state over messages at login;
        octets are message octets as sent, before dot-stuffing.
        """
        return (
            f"top={self.top_count}/{self.top_octets}, "
            f"retr={self.retr_count}/{self.retr_octets}, "
            f"del={self.deleted}/{self.messages}, size={self.size}"
        )


class RetrievalTally:
    """The RETR and TOP counts of a session, counted in place.

    A pipelined RETR of small messages counts thousands of times a session:
    adding to four integers costs less than a new frozen record each time.
    """

    __slots__ = ("retr_count", "retr_octets", "top_count", "top_octets")

    def __init__(self) -> None:
        self.retr_count = self.retr_octets = self.top_count = self.top_octets = 0

    def add(self, whole: bool, octets: int) -> None:
        """Count one RETR (`whole`) or TOP that sent `octets`."""
        if whole:
            self.retr_count += 1
            self.retr_octets += octets
        else:
            self.top_count += 1
            self.top_octets += octets

    def into(self, stats: SessionStats) -> SessionStats:
        """stats with these counts."""
        return replace(
            stats,
            retr_count=self.retr_count,
            retr_octets=self.retr_octets,
            top_count=self.top_count,
            top_octets=self.top_octets,
        )


class DropView:
    """The listing with this session's deletion marks (RFC 1939 section 5).

    Marks take effect only in the UPDATE state; until then RSET undoes them.
    A marked message no longer exists for any command of the session.
    """

    def __init__(self, maildrop: Maildrop) -> None:
        """Start with no message marked."""
        self._sizes = maildrop.sizes
        self._uids = maildrop.uids
        self._marked: set[int] = set()
        self._live_octets = sum(self._sizes)
        self._total_octets = self._live_octets

    @property
    def total(self) -> tuple[int, int]:
        """Messages and octets at login, marks ignored."""
        return len(self._sizes), self._total_octets

    @property
    def live(self) -> tuple[int, int]:
        """Messages and octets not marked deleted (RFC 1939 STAT)."""
        return len(self._sizes) - len(self._marked), self._live_octets

    def message(self, number: int) -> MessageInfo | None:
        """The message numbered `number`, or None if absent or marked deleted."""
        if not 1 <= number <= len(self._sizes) or number in self._marked:
            return None
        return MessageInfo(self._sizes[number - 1], self._uids[number - 1])

    def mark(self, number: int) -> bool:
        """Mark a message deleted; False if there is no such message."""
        message = self.message(number)
        if message is None:
            return False
        self._marked.add(number)
        self._live_octets -= message.size
        return True

    def reset(self) -> None:
        """Undo every mark (RSET)."""
        self._marked.clear()
        self._live_octets = self._total_octets

    def numbered(self, field: str) -> list[str]:
        """ "<number> <size>" or "<number> <uid>" for each message not marked.

        LIST and UIDL of a large maildrop: made from the column at once, with
        no record per message.
        """
        column: tuple[int, ...] | tuple[str, ...]
        column = self._sizes if field == "size" else self._uids
        numbers = range(1, len(column) + 1)
        marked = self._marked
        return [
            f"{number} {value}"
            for number, value in zip(numbers, column, strict=True)
            if number not in marked
        ]

    def marked(self) -> tuple[MessageRef, ...]:
        """The messages marked deleted, in number order."""
        return tuple(
            MessageRef(number, self._uids[number - 1])
            for number in sorted(self._marked)
        )
