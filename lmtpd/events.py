"""Events the LMTP protocol core hands to the application, one per next_event()."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from lmtpd.body import BodyDefect
from lmtpd.envelope import Envelope, Session


class AbortReason(Enum):
    """Why a message body the application had opened will never complete."""

    CONNECTION_CLOSED = "connection closed"
    RESET = "reset"
    QUIT = "quit"
    SHUTDOWN = "shutdown"


@dataclass(frozen=True)
class NeedData:
    """No event can be produced until more bytes arrive: read and receive_data()."""


@dataclass(frozen=True)
class Lhlo:
    """The client greeted us with LHLO; the core has answered it."""

    session: Session


@dataclass(frozen=True)
class MailFrom:
    """A mail transaction began; the core has answered MAIL with 250."""

    session: Session
    envelope: Envelope


@dataclass(frozen=True)
class RcptTo:
    """A syntactically valid RCPT: answer it with answer_rcpt(reply).

    `address` is the raw text between the angle brackets.
    """

    session: Session
    envelope: Envelope
    address: str


@dataclass(frozen=True)
class BodyStart:
    """DATA or the first BDAT: open the body, then answer_body_start().

    Answer None to go ahead, or a 4xx/5xx Reply to refuse. After a go-ahead,
    BodyChunk events follow and then exactly one MessageComplete or
    BodyAborted.
    """

    session: Session
    envelope: Envelope
    chunking: bool


@dataclass(frozen=True)
class BodyChunk:
    """Decoded message octets in order; a chunk never ends between CR and LF.

    `crlf` is True when every line end in `data` is CRLF and it holds no other
    CR (DATA, whose line ends are normalised); BDAT octets are verbatim.
    """

    data: bytes
    crlf: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class MessageComplete:
    """The body ended.

    With `defect` None, deliver and call answer_message() with one Reply per
    recipient of `envelope.rcpt_tos`. With a defect, the core has already
    answered every recipient: only discard what was written.
    """

    session: Session
    envelope: Envelope
    defect: BodyDefect | None
    size: int


@dataclass(frozen=True)
class BodyAborted:
    """The body the application opened will never complete: discard it."""

    session: Session
    envelope: Envelope
    reason: AbortReason


@dataclass(frozen=True)
class Quit:
    """The client sent QUIT; flush data_to_send() and close the connection."""


@dataclass(frozen=True)
class ConnectionClosed:
    """The connection is over: the peer closed it, or QUIT or shutdown() ended it."""


Event = (
    NeedData
    | Lhlo
    | MailFrom
    | RcptTo
    | BodyStart
    | BodyChunk
    | MessageComplete
    | BodyAborted
    | Quit
    | ConnectionClosed
)
