"""Working state of one open mail transaction inside the protocol core."""

from __future__ import annotations

from dataclasses import dataclass

from lmtpd import replies
from lmtpd.body import BodyCheck, BodyDefect, ChunkDecoder
from lmtpd.envelope import BodyType, Envelope
from lmtpd.replies import Reply

# The reply every recipient gets for a body refused once it has ended. One
# reply per recipient (RFC 2033 section 4.2) keeps the client in step.
DEFECT_REPLIES = {
    BodyDefect.TOO_BIG: replies.MESSAGE_TOO_BIG,
    BodyDefect.LINE_TOO_LONG: replies.BODY_LINE_TOO_LONG,
    BodyDefect.NUL_BYTE: replies.NUL_IN_BODY,
}


@dataclass(frozen=True)
class Limits:
    """Limits of the core; 0 means unlimited where noted.

    RFC 5321 section 4.5.3.1 sets the least a server must accept: 512-octet
    command lines, 1000-octet text lines, 100 recipients. The command line
    default is 2048 octets because MAIL with SIZE, BODY and SMTPUTF8
    parameters and a UTF-8 address, and XFORWARD with long host names
    (Postfix budgets 600 octets for them), outgrow 512; Postfix's own
    line_length_limit is 2048 as well.
    """

    max_message_size: int = 50 * 1024 * 1024  # octets; 0 = unlimited
    max_line_length: int = 1000  # octets with CRLF, DATA/BDAT text; 0 = unlimited
    max_command_line: int = 2048  # octets with CRLF
    max_recipients: int = 1000  # accepted recipients per transaction

    def __post_init__(self) -> None:
        if self.max_message_size < 0 or self.max_line_length < 0:
            raise ValueError("size limits must be 0 (unlimited) or positive")
        if self.max_command_line < 3 or self.max_recipients < 1:
            raise ValueError("command line and recipient limits must be positive")


class Transaction:
    """The open transaction: its envelope so far and the state of its body."""

    def __init__(self, envelope: Envelope) -> None:
        self.envelope = envelope
        self.used_bdat = False
        # True from an accepted BodyStart until MessageComplete or BodyAborted.
        self.body_open = False
        # A BDAT body the application refused: every recipient gets this.
        self.refusal: Reply | None = None
        self.check = BodyCheck(0, 0, text=False)
        self.chunks = ChunkDecoder()

    def add_recipient(self, address: str) -> None:
        """Record a recipient the application accepted."""
        self.envelope = self.envelope.with_recipient(address)

    def start_body(self, limits: Limits, refusal: Reply | None) -> None:
        """Open the body, or remember why the application refused it."""
        self.refusal = refusal
        self.body_open = refusal is None
        text = self.envelope.body_type is not BodyType.BINARY_MIME
        self.check = BodyCheck(limits.max_message_size, limits.max_line_length, text)

    @property
    def keeping(self) -> bool:
        """True while body octets are still wanted by the application."""
        return self.body_open and self.check.defect is None

    def per_recipient(self, reply: Reply) -> list[Reply]:
        """`reply` once for every accepted recipient, each naming its recipient."""
        return [reply.for_recipient(rcpt) for rcpt in self.envelope.rcpt_tos]
