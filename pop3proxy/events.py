"""Events the POP3 protocol core hands to the application, one per next_event()."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from pop3proxy.maildrop import MessageRef, SessionStats


class LoginMethod(Enum):
    """How the client presented its password."""

    USER_PASS = "USER/PASS"
    SASL_PLAIN = "AUTH PLAIN"


class CloseReason(Enum):
    """Why the connection ended."""

    # QUIT: in AUTHORIZATION, or after the UPDATE state was answered.
    QUIT = "quit"
    # The peer went away without QUIT: nothing is deleted (RFC 1939 section 6).
    DROPPED = "closed without QUIT"
    # A message could not be sent in full; closing is the only way to stop a
    # multi-line response without the client taking it as complete.
    ABORTED = "message transfer aborted"
    SHUTDOWN = "shutdown"


@dataclass(frozen=True)
class NeedData:
    """No event can be produced until more bytes arrive: read and receive_data()."""


@dataclass(frozen=True)
class StartTLS:
    """STLS was accepted: flush data_to_send(), run the handshake, tls_started().

    The core has dropped every byte that followed the STLS line, and drops
    whatever receive_data() brings until tls_started(): nothing sent in the
    clear before the handshake runs after it. If the handshake fails, call
    connection_lost().
    """


@dataclass(frozen=True)
class Authenticate:
    """Check a user's password, then answer_auth() with a Maildrop or an -ERR.

    `authzid` is the SASL authorization identity, empty when the client
    gave none or used USER/PASS; a non-empty one different from `user` asks
    to act as another user, which the application allows or refuses.
    """

    user: str
    password: str = field(repr=False)
    authzid: str
    method: LoginMethod


@dataclass(frozen=True)
class RetrieveMessage:
    """RETR or TOP: stream the stored message with feed_message(), finish_message().

    `body_lines` is None for RETR and TOP's line count otherwise; the core
    cuts the message itself, so always feed from the start. Line ends may
    be LF or CRLF. If the message cannot be read, abort_message().
    """

    number: int
    uid: str
    size: int
    body_lines: int | None


@dataclass(frozen=True)
class Update:
    """QUIT in TRANSACTION (RFC 1939 section 6): remove `deleted`, answer_update().

    Also the moment to release the maildrop; `deleted` may be empty.
    """

    deleted: tuple[MessageRef, ...]


@dataclass(frozen=True)
class ConnectionClosed:
    """The connection is over: flush data_to_send() and close the socket.

    With `reason` DROPPED after login, the client never sent QUIT: release
    the maildrop and delete nothing.
    """

    reason: CloseReason
    authenticated: bool
    stats: SessionStats


Event = NeedData | StartTLS | Authenticate | RetrieveMessage | Update | ConnectionClosed
