"""Every reply the LMTP server sends, each with its RFC 3463 enhanced status code."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# RFC 3463 section 2: class.subject.detail, class 2, 4 or 5, subject and detail
# up to three digits each.
_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


@dataclass(frozen=True)
class Reply:
    """One LMTP reply: basic code, enhanced status code and human text.

    `enhanced` is empty only where RFC 2034 section 3 leaves it out: the
    greeting, the LHLO reply and the 354 go-ahead. A `text` holding "\\n"
    becomes a multi-line reply (RFC 5321 section 4.2.1), every line carrying
    the code.
    """

    code: int
    enhanced: str
    text: str

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code out of range: {self.code}")
        if self.enhanced and not _ENHANCED.fullmatch(self.enhanced):
            raise ValueError(f"malformed enhanced status code: {self.enhanced!r}")
        if self.enhanced and self.enhanced[0] != str(self.code)[0]:
            raise ValueError("enhanced status class differs from the reply code")
        if "\r" in self.text:
            raise ValueError("reply text must not hold a carriage return")

    @property
    def is_success(self) -> bool:
        """True for a 2xx reply."""
        return 200 <= self.code < 300

    @property
    def is_failure(self) -> bool:
        """True for a 4xx or 5xx reply."""
        return self.code >= 400

    def to_bytes(self) -> bytes:
        """Format the reply for the wire, one CRLF-terminated line per text line."""
        lines = self.text.split("\n")
        prefix = f"{self.enhanced} " if self.enhanced else ""
        out = [f"{self.code}-{prefix}{line}\r\n" for line in lines[:-1]]
        out.append(f"{self.code} {prefix}{lines[-1]}\r\n")
        return "".join(out).encode("utf-8")

    def for_recipient(self, address: str) -> Reply:
        """Name the recipient in angle brackets before the text (done only once)."""
        tag = f"<{address}>"
        if self.text.startswith(tag):
            return self
        if "\r" in address:
            raise ValueError("reply text must not hold a carriage return")
        # The code and status code were checked when self was made: built
        # without __post_init__, as this runs for every recipient of a message.
        named = object.__new__(Reply)
        object.__setattr__(named, "code", self.code)
        object.__setattr__(named, "enhanced", self.enhanced)
        object.__setattr__(named, "text", f"{tag} {self.text}")
        return named


def greeting(hostname: str) -> Reply:
    """The 220 banner sent when a client connects."""
    return Reply(220, "", f"{hostname} LMTP server ready")


def closing(hostname: str) -> Reply:
    """The 221 reply to QUIT."""
    return Reply(221, "2.0.0", f"{hostname} closing connection")


def lhlo(hostname: str, keywords: Iterable[str]) -> Reply:
    """The multi-line 250 reply to LHLO: our name, then one extension per line."""
    return Reply(250, "", "\n".join([hostname, *keywords]))


def chunk_received(size: int) -> Reply:
    """The 250 reply to a BDAT chunk that is not the last (RFC 3030 section 2)."""
    return Reply(250, "2.0.0", f"{size} octets received")


# Success.
OK = Reply(250, "2.0.0", "OK")
MAIL_OK = Reply(250, "2.1.0", "Sender OK")
RCPT_OK = Reply(250, "2.1.5", "Recipient OK")
DELIVERED = Reply(250, "2.0.0", "Saved")
CANNOT_VRFY = Reply(252, "2.5.0", "Cannot verify users; send mail to find out")
HELP = Reply(
    214, "2.0.0", "Commands: LHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY XFORWARD"
)
START_INPUT = Reply(354, "", "Start mail input; end with <CRLF>.<CRLF>")

# Closing the connection (sent by the I/O layer, RFC 5321 section 3.8).
TIMEOUT = Reply(421, "4.4.2", "Timeout waiting for input, closing connection")
TOO_MANY_SESSIONS = Reply(421, "4.3.2", "Too many connections, try again later")
SHUTTING_DOWN = Reply(421, "4.3.2", "Server shutting down, try again later")
# Our own fault while serving a session: temporary, so the client keeps the mail.
INTERNAL_ERROR = Reply(421, "4.3.0", "Local error, closing connection")

# Temporary failures: the client keeps the message and retries.
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
MAILBOX_BUSY = Reply(450, "4.2.0", "Mailbox busy, try again later")
MAILBOX_FULL = Reply(452, "4.2.2", "Mailbox full")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
NO_SPACE = Reply(452, "4.3.1", "Insufficient system storage, try again later")
# RFC 3463 X.3.5 (system incorrectly configured): an alias to outside addresses
# must be expanded by the MTA (its virtual_alias_maps or virtusertable), since
# this server only stores mail; the reply says so, and the MTA keeps the message.
EXTERNAL_ALIAS = Reply(
    451, "4.3.5", "Alias to outside addresses: the MTA must expand it (see mdmail mta)"
)

# Permanent failures of recipients and messages.
NO_SUCH_USER = Reply(550, "5.1.1", "User unknown")
DOMAIN_NOT_HOSTED = Reply(550, "5.1.2", "Domain not hosted here")
MAILBOX_DISABLED = Reply(550, "5.2.1", "Mailbox disabled")
MAILBOX_FULL_PERM = Reply(552, "5.2.2", "Mailbox full")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message exceeds the maximum message size")
# RFC 3463 X.6.0 (other media error): the content, not its total size, is at
# fault. 552 follows RFC 5321 section 4.5.3.1.9 for an exceeded limit.
BODY_LINE_TOO_LONG = Reply(552, "5.6.0", "Message has a line over the length limit")
NUL_IN_BODY = Reply(554, "5.6.0", "Message contains NUL characters")
# RFC 6531 section 3.5: X.6.7 for non-ASCII addresses without SMTPUTF8.
NON_ASCII_ADDRESS = Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")

# Command errors.
UNKNOWN_COMMAND = Reply(500, "5.5.2", "Command unrecognized")
BAD_CHARACTERS = Reply(500, "5.5.2", "Invalid characters in command")
# X.5.6 is registered for over-long AUTH lines; it is the one "line too long"
# detail code there is, and 500 is the code RFC 5321 section 4.5.3.1.9 gives.
COMMAND_TOO_LONG = Reply(500, "5.5.6", "Line too long")
HELO_REFUSED = Reply(500, "5.5.1", "This is an LMTP server: use LHLO")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
SYNTAX_ERROR = Reply(501, "5.5.4", "Syntax error in parameters")
LHLO_SYNTAX = Reply(501, "5.5.4", "Syntax: LHLO <hostname>")
MAIL_SYNTAX = Reply(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]")
RCPT_SYNTAX = Reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
VRFY_SYNTAX = Reply(501, "5.5.4", "Syntax: VRFY <address>")
BDAT_SYNTAX = Reply(501, "5.5.4", "Syntax: BDAT <size> [LAST]")
XFORWARD_SYNTAX = Reply(501, "5.5.4", "Syntax: XFORWARD attribute=value ...")
BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax")
UNKNOWN_PARAMETER = Reply(555, "5.5.4", "Unsupported parameter")

# Commands out of sequence (RFC 5321 section 4.1.4).
NEED_LHLO = Reply(503, "5.5.1", "Send LHLO first")
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL command first")
NESTED_MAIL = Reply(503, "5.5.1", "Sender already given")
NO_RECIPIENTS = Reply(503, "5.5.1", "No valid recipients")
RCPT_AFTER_BDAT = Reply(503, "5.5.1", "RCPT not allowed after BDAT")
DATA_AFTER_BDAT = Reply(503, "5.5.1", "DATA not allowed after BDAT")
BINARYMIME_NEEDS_BDAT = Reply(503, "5.5.1", "BODY=BINARYMIME requires BDAT")
XFORWARD_IN_TRANSACTION = Reply(503, "5.5.1", "XFORWARD not allowed inside MAIL")
