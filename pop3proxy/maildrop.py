"""The maildrop as one POP3 session sees it: the listing, deletion marks and counts."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

# RFC 1939 section 7: a unique-id is 1 to 70 characters in 0x21 to 0x7E.
_UNIQUE_ID = re.compile(r"[\x21-\x7e]{1,70}")


@dataclass(frozen=True)
class MessageInfo:
    """One message of the listing the application supplies at login.

    `size` is the exact size on the wire (RFC 1939 section 11): every line
    end counted as CRLF, dot-stuffing not counted; `wire_size()` in
    pop3proxy.content computes it. `uid` is the UIDL unique-id.
    """

    size: int
    uid: str

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError("message size must not be negative")
        if not _UNIQUE_ID.fullmatch(self.uid):
            raise ValueError(f"unique-id must be 1-70 printable ASCII: {self.uid!r}")


@dataclass(frozen=True)
class Maildrop:
    """The messages of a maildrop at login, numbered 1, 2, ... in this order."""

    messages: tuple[MessageInfo, ...]

    def __post_init__(self) -> None:
        # RFC 1939 section 7: no two messages share a unique-id.
        if len({message.uid for message in self.messages}) != len(self.messages):
            raise ValueError("unique-ids must be unique within the maildrop")

    @classmethod
    def of(cls, messages: Sequence[tuple[int, str]]) -> Maildrop:
        """Build a maildrop from (size, uid) pairs."""
        return cls(tuple(MessageInfo(size, uid) for size, uid in messages))


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

    def retrieved(self, whole: bool, octets: int) -> SessionStats:
        """Count one RETR (`whole`) or TOP that sent `octets`."""
        if whole:
            return replace(
                self,
                retr_count=self.retr_count + 1,
                retr_octets=self.retr_octets + octets,
            )
        return replace(
            self, top_count=self.top_count + 1, top_octets=self.top_octets + octets
        )


class DropView:
    """The listing with this session's deletion marks (RFC 1939 section 5).

    Marks take effect only in the UPDATE state; until then RSET undoes them.
    A marked message no longer exists for any command of the session.
    """

    def __init__(self, maildrop: Maildrop) -> None:
        """Start with no message marked."""
        self._messages = maildrop.messages
        self._marked: set[int] = set()
        self._live_octets = sum(message.size for message in self._messages)
        self._total_octets = self._live_octets

    @property
    def total(self) -> tuple[int, int]:
        """Messages and octets at login, marks ignored."""
        return len(self._messages), self._total_octets

    @property
    def live(self) -> tuple[int, int]:
        """Messages and octets not marked deleted (RFC 1939 STAT)."""
        return len(self._messages) - len(self._marked), self._live_octets

    def message(self, number: int) -> MessageInfo | None:
        """The message numbered `number`, or None if absent or marked deleted."""
        if not 1 <= number <= len(self._messages) or number in self._marked:
            return None
        return self._messages[number - 1]

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

    def listing(self) -> Iterator[tuple[int, MessageInfo]]:
        """The messages not marked deleted, with their numbers, in order."""
        for number, message in enumerate(self._messages, start=1):
            if number not in self._marked:
                yield number, message

    def marked(self) -> tuple[MessageRef, ...]:
        """The messages marked deleted, in number order."""
        return tuple(
            MessageRef(number, self._messages[number - 1].uid)
            for number in sorted(self._marked)
        )
