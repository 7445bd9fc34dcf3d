"""Byte-level tables for the LMTP protocol core: input bytes in, whole replies out."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from lmtpd import replies
from lmtpd.body import BodyDefect
from lmtpd.events import (
    AbortReason,
    BodyAborted,
    BodyChunk,
    BodyStart,
    ConnectionClosed,
    Event,
    MailFrom,
    MessageComplete,
    NeedData,
    Quit,
    RcptTo,
)
from lmtpd.protocol import Limits, LMTPConnection, ProtocolUsageError, State
from lmtpd.replies import Reply

HOST = "mx.example"
GREETING = b"220 mx.example LMTP server ready\r\n"
LHLO = b"LHLO mta.example\r\n"
MAIL = b"MAIL FROM:<sender@example.org>\r\n"
RCPT_A = b"RCPT TO:<a@example.com>\r\n"
RCPT_B = b"RCPT TO:<b@example.com>\r\n"
ENVELOPE = LHLO + MAIL + RCPT_A


def lines(*texts: str) -> bytes:
    """Reply lines as the wire carries them."""
    return "".join(f"{text}\r\n" for text in texts).encode()


def lhlo_reply(size: str = "SIZE 52428800") -> list[str]:
    """The LHLO reply lines for a given SIZE keyword."""
    return [
        "250-mx.example",
        "250-PIPELINING",
        "250-ENHANCEDSTATUSCODES",
        "250-8BITMIME",
        f"250-{size}",
        "250-SMTPUTF8",
        "250-CHUNKING",
        "250-BINARYMIME",
        "250 XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT",
    ]


LHLO_OK = lhlo_reply()
MAIL_OK = "250 2.1.0 Sender OK"
RCPT_A_OK = "250 2.1.5 <a@example.com> Recipient OK"
RCPT_B_OK = "250 2.1.5 <b@example.com> Recipient OK"
GO_AHEAD = "354 Start mail input; end with <CRLF>.<CRLF>"
SAVED_A = "250 2.0.0 <a@example.com> Saved"
SAVED_B = "250 2.0.0 <b@example.com> Saved"
CLOSING = "221 2.0.0 mx.example closing connection"
ENVELOPE_OK = [*LHLO_OK, MAIL_OK, RCPT_A_OK]


@dataclass
class ScriptedApp:
    """Answers events as a small mailbox host would and records what it saw.

    Recipients starting with "nobody" are unknown, "full" ones get a full
    mailbox at delivery; a sender starting with "tempfail" makes opening the
    body fail.
    """

    events: list[Event] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)

    def rcpt(self, event: RcptTo) -> Reply:
        """Accept a recipient unless it is unknown."""
        if event.address.startswith("nobody"):
            return replies.NO_SUCH_USER
        return replies.RCPT_OK

    def body_start(self, event: BodyStart) -> Reply | None:
        """Open the body unless the sender asks for a local failure."""
        if event.envelope.mail_from.startswith("tempfail"):
            return replies.LOCAL_ERROR
        return None

    def outcome(self, event: MessageComplete) -> list[Reply]:
        """One delivery reply per accepted recipient."""
        return [
            replies.MAILBOX_FULL_PERM if rcpt.startswith("full") else replies.DELIVERED
            for rcpt in event.envelope.rcpt_tos
        ]


def drive(conn: LMTPConnection, parts: Iterator[bytes], app: ScriptedApp) -> bytearray:
    """Run the event loop the asyncio layer will run, until the connection ends."""
    out = bytearray(conn.data_to_send())
    while True:
        event = conn.next_event()
        app.events.append(event)
        if isinstance(event, NeedData):
            out += conn.data_to_send()
            conn.receive_data(next(parts, b""))
        elif isinstance(event, RcptTo):
            conn.answer_rcpt(app.rcpt(event))
        elif isinstance(event, BodyStart):
            conn.answer_body_start(app.body_start(event))
        elif isinstance(event, BodyChunk):
            app.body += event.data
        elif isinstance(event, MessageComplete) and event.defect is None:
            conn.answer_message(app.outcome(event))
        elif isinstance(event, (Quit, ConnectionClosed)):
            out += conn.data_to_send()
            return out


def whole(data: bytes) -> list[bytes]:
    """All input in one receive call (the fully pipelined case)."""
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    """One octet per receive call."""
    return [data[index : index + 1] for index in range(len(data))]


def random_splits(data: bytes) -> list[bytes]:
    """Receive calls of random sizes, seeded by the input itself."""
    rng = random.Random(data)
    cuts = sorted(rng.sample(range(1, len(data)), min(7, len(data) - 1)))
    return [
        data[start:end]
        for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True)
    ]


FEEDS: list[Callable[[bytes], list[bytes]]] = [whole, bytewise, random_splits]


def run(
    data: bytes,
    feed: Callable[[bytes], list[bytes]] = whole,
    limits: Limits | None = None,
) -> tuple[bytes, ScriptedApp]:
    """Greet, feed `data` then end of file; return the replies after the greeting."""
    conn = LMTPConnection(HOST, limits)
    conn.send_greeting()
    app = ScriptedApp()
    out = bytes(drive(conn, iter(feed(data) if data else []), app))
    assert out.startswith(GREETING)
    return out[len(GREETING) :], app


@dataclass(frozen=True)
class Case:
    """One protocol rule: what the client sends and every reply line expected."""

    name: str
    sent: bytes
    expected: list[str]
    limits: Limits | None = None


SMALL = Limits(max_message_size=64, max_line_length=20, max_recipients=2)
SMALL_LHLO = lhlo_reply("SIZE 64")

CASES = [
    # Greeting and LHLO (RFC 2033 section 4.1).
    Case("lhlo", LHLO, LHLO_OK),
    Case("lhlo lower case", b"lhlo mta\r\n", LHLO_OK),
    Case("lhlo without name", b"LHLO\r\n", ["501 5.5.4 Syntax: LHLO <hostname>"]),
    Case(
        "helo refused", b"HELO mta\r\n", ["500 5.5.1 This is an LMTP server: use LHLO"]
    ),
    Case(
        "ehlo refused", b"EHLO mta\r\n", ["500 5.5.1 This is an LMTP server: use LHLO"]
    ),
    Case("size unlimited", LHLO, lhlo_reply("SIZE"), Limits(max_message_size=0)),
    # Simple commands.
    Case("noop", b"NOOP\r\n", ["250 2.0.0 OK"]),
    Case("noop with argument", b"noop hello\r\n", ["250 2.0.0 OK"]),
    Case(
        "vrfy reveals nothing",
        b"VRFY root\r\n",
        ["252 2.5.0 Cannot verify users; send mail to find out"],
    ),
    Case("vrfy without argument", b"VRFY\r\n", ["501 5.5.4 Syntax: VRFY <address>"]),
    Case("expn", b"EXPN staff\r\n", ["502 5.5.1 Command not implemented"]),
    Case(
        "help",
        b"HELP\r\n",
        ["214 2.0.0 Commands: LHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY XFORWARD"],
    ),
    Case("unknown command", b"FOO bar\r\n", ["500 5.5.2 Command unrecognized"]),
    Case("empty line", b"\r\n", ["500 5.5.2 Command unrecognized"]),
    Case(
        "nul in command", b"NOOP \x00\r\n", ["500 5.5.2 Invalid characters in command"]
    ),
    Case(
        "bare lf in command",
        b"NOOP a\nb\r\n",
        ["500 5.5.2 Invalid characters in command"],
    ),
    Case(
        "invalid utf-8", b"NOOP \xff\r\n", ["500 5.5.2 Invalid characters in command"]
    ),
    Case("quit", b"QUIT\r\n", [CLOSING]),
    Case("nothing runs after quit", b"QUIT\r\nNOOP\r\n", [CLOSING]),
    Case("rset", b"RSET\r\n", ["250 2.0.0 OK"]),
    Case("rset with argument", b"RSET x\r\n", ["501 5.5.4 Syntax error in parameters"]),
    # Command line length: 2048 octets with CRLF (lmtpd.transaction.Limits).
    Case("command of 2048 octets", b"NOOP " + b"x" * 2041 + b"\r\n", ["250 2.0.0 OK"]),
    Case(
        "command of 2049 octets is skipped",
        b"NOOP " + b"x" * 2042 + b"\r\nNOOP\r\n",
        ["500 5.5.6 Line too long", "250 2.0.0 OK"],
    ),
    Case(
        "huge line runs nothing",
        b"RSET" + b"\r" * 5000 + b"QUIT\r\nNOOP\r\n",
        ["500 5.5.6 Line too long", "250 2.0.0 OK"],
    ),
    # MAIL (RFC 5321 section 4.1.1.2, RFC 1870, RFC 6152, RFC 6531).
    Case("mail before lhlo", MAIL, ["503 5.5.1 Send LHLO first"]),
    Case("mail", LHLO + MAIL, [*LHLO_OK, MAIL_OK]),
    Case("mail sendmail style", LHLO + b"MAIL From:<s@x>\r\n", [*LHLO_OK, MAIL_OK]),
    Case("mail lower case", LHLO + b"mail from:<s@x>\r\n", [*LHLO_OK, MAIL_OK]),
    Case("mail space after colon", LHLO + b"MAIL FROM: <s@x>\r\n", [*LHLO_OK, MAIL_OK]),
    Case("null sender", LHLO + b"MAIL FROM:<>\r\n", [*LHLO_OK, MAIL_OK]),
    Case(
        "quoted local part",
        LHLO + b'MAIL FROM:<"a> b"@x>\r\n',
        [*LHLO_OK, MAIL_OK],
    ),
    Case(
        "mail without brackets",
        LHLO + b"MAIL FROM:s@x\r\n",
        [*LHLO_OK, "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"],
    ),
    Case(
        "mail without from",
        LHLO + b"MAIL <s@x>\r\n",
        [*LHLO_OK, "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"],
    ),
    Case(
        "unclosed address",
        LHLO + b"MAIL FROM:<s@x\r\n",
        [*LHLO_OK, "501 5.1.7 Bad sender address syntax"],
    ),
    Case(
        "space in address",
        LHLO + b"MAIL FROM:<s @x>\r\n",
        [*LHLO_OK, "501 5.1.7 Bad sender address syntax"],
    ),
    Case(
        "nested mail",
        LHLO + MAIL + MAIL,
        [*LHLO_OK, MAIL_OK, "503 5.5.1 Sender already given"],
    ),
    Case(
        "mail parameters",
        LHLO + b"MAIL FROM:<s@x> SIZE=100 BODY=8BITMIME SMTPUTF8\r\n",
        [*LHLO_OK, MAIL_OK],
    ),
    Case(
        "parameters case-insensitive",
        LHLO + b"MAIL FROM:<s@x> size=100 body=7bit smtputf8\r\n",
        [*LHLO_OK, MAIL_OK],
    ),
    Case(
        "declared size over the limit",
        LHLO + b"MAIL FROM:<s@x> SIZE=65\r\n",
        [*SMALL_LHLO, "552 5.3.4 Message exceeds the maximum message size"],
        SMALL,
    ),
    Case(
        "declared size at the limit",
        LHLO + b"MAIL FROM:<s@x> SIZE=64\r\n",
        [*SMALL_LHLO, MAIL_OK],
        SMALL,
    ),
    Case(
        "size not a number",
        LHLO + b"MAIL FROM:<s@x> SIZE=big\r\n",
        [*LHLO_OK, "501 5.5.4 Syntax error in parameters"],
    ),
    Case(
        "unknown body type",
        LHLO + b"MAIL FROM:<s@x> BODY=9BIT\r\n",
        [*LHLO_OK, "501 5.5.4 Syntax error in parameters"],
    ),
    Case(
        "smtputf8 takes no value",
        LHLO + b"MAIL FROM:<s@x> SMTPUTF8=yes\r\n",
        [*LHLO_OK, "501 5.5.4 Syntax error in parameters"],
    ),
    Case(
        "duplicate parameter",
        LHLO + b"MAIL FROM:<s@x> SIZE=1 SIZE=2\r\n",
        [*LHLO_OK, "501 5.5.4 Syntax error in parameters"],
    ),
    Case(
        "unknown mail parameter",
        LHLO + b"MAIL FROM:<s@x> AUTH=<>\r\n",
        [*LHLO_OK, "555 5.5.4 Unsupported parameter"],
    ),
    Case(
        "utf-8 sender without smtputf8",
        LHLO + "MAIL FROM:<jörg@x>\r\n".encode(),
        [*LHLO_OK, "553 5.6.7 Non-ASCII address requires SMTPUTF8"],
    ),
    Case(
        "utf-8 sender with smtputf8",
        LHLO + "MAIL FROM:<jörg@x> SMTPUTF8\r\n".encode(),
        [*LHLO_OK, MAIL_OK],
    ),
    # RCPT (RFC 5321 section 4.1.1.3); the application decides.
    Case(
        "rcpt before mail",
        LHLO + RCPT_A,
        [*LHLO_OK, "503 5.5.1 Need MAIL command first"],
    ),
    Case("rcpt", ENVELOPE, ENVELOPE_OK),
    Case(
        "rcpt sendmail style", LHLO + MAIL + b"RCPT To:<a@example.com>\r\n", ENVELOPE_OK
    ),
    Case(
        "unknown recipient",
        LHLO + MAIL + b"RCPT TO:<nobody@example.com>\r\n",
        [*LHLO_OK, MAIL_OK, "550 5.1.1 <nobody@example.com> User unknown"],
    ),
    Case(
        "empty recipient",
        LHLO + MAIL + b"RCPT TO:<>\r\n",
        [*LHLO_OK, MAIL_OK, "501 5.1.3 Bad recipient address syntax"],
    ),
    Case(
        "rcpt without to",
        LHLO + MAIL + b"RCPT <a@example.com>\r\n",
        [*LHLO_OK, MAIL_OK, "501 5.5.4 Syntax: RCPT TO:<address>"],
    ),
    Case(
        "rcpt parameter",
        LHLO + MAIL + b"RCPT TO:<a@example.com> NOTIFY=NEVER\r\n",
        [*LHLO_OK, MAIL_OK, "555 5.5.4 <a@example.com> Unsupported parameter"],
    ),
    Case(
        "utf-8 recipient without smtputf8",
        LHLO + MAIL + "RCPT TO:<ü@example.com>\r\n".encode(),
        [
            *LHLO_OK,
            MAIL_OK,
            "553 5.6.7 <ü@example.com> Non-ASCII address requires SMTPUTF8",
        ],
    ),
    Case(
        "too many recipients",
        LHLO
        + MAIL
        + b"RCPT TO:<nobody@x>\r\n"
        + RCPT_A
        + RCPT_B
        + b"RCPT TO:<c@x>\r\n",
        [
            *SMALL_LHLO,
            MAIL_OK,
            "550 5.1.1 <nobody@x> User unknown",
            RCPT_A_OK,
            RCPT_B_OK,
            "452 4.5.3 <c@x> Too many recipients",
        ],
        SMALL,
    ),
    # DATA (RFC 2033 section 4.2).
    Case(
        "data before mail",
        LHLO + b"DATA\r\n",
        [*LHLO_OK, "503 5.5.1 Need MAIL command first"],
    ),
    Case(
        "data without recipients",
        LHLO + MAIL + b"RCPT TO:<nobody@x>\r\nDATA\r\n",
        [
            *LHLO_OK,
            MAIL_OK,
            "550 5.1.1 <nobody@x> User unknown",
            "503 5.5.1 No valid recipients",
        ],
    ),
    Case(
        "data with argument",
        ENVELOPE + b"DATA now\r\n",
        [*ENVELOPE_OK, "501 5.5.4 Syntax error in parameters"],
    ),
    Case(
        "delivery",
        ENVELOPE + b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n",
        [*ENVELOPE_OK, GO_AHEAD, SAVED_A, CLOSING],
    ),
    Case(
        "one reply per accepted recipient, in order",
        LHLO
        + MAIL
        + RCPT_B
        + b"RCPT TO:<nobody@x>\r\n"
        + b"RCPT TO:<full@x>\r\n"
        + RCPT_A
        + b"DATA\r\nhi\r\n.\r\n",
        [
            *LHLO_OK,
            MAIL_OK,
            RCPT_B_OK,
            "550 5.1.1 <nobody@x> User unknown",
            "250 2.1.5 <full@x> Recipient OK",
            RCPT_A_OK,
            GO_AHEAD,
            SAVED_B,
            "552 5.2.2 <full@x> Mailbox full",
            SAVED_A,
        ],
    ),
    Case(
        "same recipient twice gets two replies",
        ENVELOPE + RCPT_A + b"DATA\r\nhi\r\n.\r\n",
        [*ENVELOPE_OK, RCPT_A_OK, GO_AHEAD, SAVED_A, SAVED_A],
    ),
    Case(
        "transaction cleared after delivery",
        ENVELOPE + b"DATA\r\nhi\r\n.\r\nRCPT TO:<a@example.com>\r\nDATA\r\n" + MAIL,
        [
            *ENVELOPE_OK,
            GO_AHEAD,
            SAVED_A,
            "503 5.5.1 Need MAIL command first",
            "503 5.5.1 Need MAIL command first",
            MAIL_OK,
        ],
    ),
    Case(
        "body open refused by the application",
        LHLO + b"MAIL FROM:<tempfail@x>\r\n" + RCPT_A + b"DATA\r\n",
        [*ENVELOPE_OK, "451 4.3.0 Local error in processing, try again later"],
    ),
    Case(
        "binarymime needs bdat",
        LHLO + b"MAIL FROM:<s@x> BODY=BINARYMIME\r\n" + RCPT_A + b"DATA\r\n",
        [*ENVELOPE_OK, "503 5.5.1 BODY=BINARYMIME requires BDAT"],
    ),
    Case(
        "lf-dot-lf does not end data",
        ENVELOPE + b"DATA\r\nhi\n.\nMAIL FROM:<evil@x>\r\n.\r\n",
        [*ENVELOPE_OK, GO_AHEAD, SAVED_A],
    ),
    Case(
        "crlf-dot-lf does not end data",
        ENVELOPE + b"DATA\r\nhi\r\n.\nRCPT TO:<evil@x>\r\n.\r\n",
        [*ENVELOPE_OK, GO_AHEAD, SAVED_A],
    ),
    Case(
        "lf-dot-crlf does not end data",
        ENVELOPE + b"DATA\r\nhi\n.\r\nQUIT\r\n.\r\n",
        [*ENVELOPE_OK, GO_AHEAD, SAVED_A],
    ),
    Case(
        "message too big, two recipients",
        LHLO
        + MAIL
        + RCPT_A
        + RCPT_B
        + b"DATA\r\n"
        + b"0123456789\r\n" * 7
        + b".\r\nNOOP\r\n",
        [
            *SMALL_LHLO,
            MAIL_OK,
            RCPT_A_OK,
            RCPT_B_OK,
            GO_AHEAD,
            "552 5.3.4 <a@example.com> Message exceeds the maximum message size",
            "552 5.3.4 <b@example.com> Message exceeds the maximum message size",
            "250 2.0.0 OK",
        ],
        SMALL,
    ),
    Case(
        "message at the size limit",
        LHLO + MAIL + RCPT_A + b"DATA\r\n" + b"0123456789\r\n" * 5 + b"ab\r\n.\r\n",
        [*SMALL_LHLO, MAIL_OK, RCPT_A_OK, GO_AHEAD, SAVED_A],
        SMALL,
    ),
    Case(
        "body line too long, two recipients",
        LHLO + MAIL + RCPT_A + RCPT_B + b"DATA\r\n" + b"x" * 19 + b"\r\n.\r\n",
        [
            *SMALL_LHLO,
            MAIL_OK,
            RCPT_A_OK,
            RCPT_B_OK,
            GO_AHEAD,
            "552 5.6.0 <a@example.com> Message has a line over the length limit",
            "552 5.6.0 <b@example.com> Message has a line over the length limit",
        ],
        SMALL,
    ),
    Case(
        "body line at the limit, stuffing dot not counted",
        LHLO + MAIL + RCPT_A + b"DATA\r\n.." + b"x" * 17 + b"\r\n.\r\n",
        [*SMALL_LHLO, MAIL_OK, RCPT_A_OK, GO_AHEAD, SAVED_A],
        SMALL,
    ),
    Case(
        "nul in body",
        LHLO + MAIL + RCPT_A + RCPT_B + b"DATA\r\na\x00b\r\n.\r\n",
        [
            *LHLO_OK,
            MAIL_OK,
            RCPT_A_OK,
            RCPT_B_OK,
            GO_AHEAD,
            "554 5.6.0 <a@example.com> Message contains NUL characters",
            "554 5.6.0 <b@example.com> Message contains NUL characters",
        ],
    ),
    # RSET and a new greeting clear the transaction (RFC 5321 section 4.1.1.5).
    Case(
        "rset clears the transaction",
        ENVELOPE + b"RSET\r\nDATA\r\n" + MAIL + RCPT_B,
        [
            *ENVELOPE_OK,
            "250 2.0.0 OK",
            "503 5.5.1 Need MAIL command first",
            MAIL_OK,
            RCPT_B_OK,
        ],
    ),
    Case(
        "lhlo clears the transaction",
        ENVELOPE + LHLO + b"DATA\r\n",
        [*ENVELOPE_OK, *LHLO_OK, "503 5.5.1 Need MAIL command first"],
    ),
    # BDAT (RFC 3030 section 2, RFC 2033 section 4.3).
    Case(
        "bdat single chunk",
        ENVELOPE + b"BDAT 5 LAST\r\nhello",
        [*ENVELOPE_OK, SAVED_A],
    ),
    Case(
        "bdat chunks",
        ENVELOPE + RCPT_B + b"BDAT 3\r\nhelBDAT 2\r\nloBDAT 0 LAST\r\nNOOP\r\n",
        [
            *ENVELOPE_OK,
            RCPT_B_OK,
            "250 2.0.0 3 octets received",
            "250 2.0.0 2 octets received",
            SAVED_A,
            SAVED_B,
            "250 2.0.0 OK",
        ],
    ),
    Case(
        "bdat lower case last",
        ENVELOPE + b"bdat 2 last\r\nhi",
        [*ENVELOPE_OK, SAVED_A],
    ),
    Case(
        "bdat without recipients consumes its octets",
        LHLO + MAIL + b"BDAT 6\r\nQUIT\r\nNOOP\r\n",
        [*LHLO_OK, MAIL_OK, "503 5.5.1 No valid recipients", "250 2.0.0 OK"],
    ),
    Case(
        "bdat without mail consumes its octets",
        LHLO + b"BDAT 6\r\nQUIT\r\nNOOP\r\n",
        [*LHLO_OK, "503 5.5.1 Need MAIL command first", "250 2.0.0 OK"],
    ),
    Case(
        "bdat last without recipients gets one 503",
        LHLO
        + MAIL
        + b"RCPT TO:<nobody@x>\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\nRCPT TO:<a@x>\r\n",
        [
            *LHLO_OK,
            MAIL_OK,
            "550 5.1.1 <nobody@x> User unknown",
            "503 5.5.1 No valid recipients",
            "250 2.0.0 OK",
            "503 5.5.1 Need MAIL command first",
        ],
    ),
    Case(
        "data after bdat",
        ENVELOPE + b"BDAT 2\r\nhiDATA\r\nBDAT 0 LAST\r\n",
        [
            *ENVELOPE_OK,
            "250 2.0.0 2 octets received",
            "503 5.5.1 DATA not allowed after BDAT",
            SAVED_A,
        ],
    ),
    Case(
        "rcpt after bdat",
        ENVELOPE + b"BDAT 2\r\nhi" + RCPT_B + b"BDAT 0 LAST\r\n",
        [
            *ENVELOPE_OK,
            "250 2.0.0 2 octets received",
            "503 5.5.1 RCPT not allowed after BDAT",
            SAVED_A,
        ],
    ),
    Case(
        "bdat syntax",
        ENVELOPE + b"BDAT\r\nBDAT x\r\nBDAT 1 FIRST\r\nBDAT -1\r\n",
        [*ENVELOPE_OK, *["501 5.5.4 Syntax: BDAT <size> [LAST]"] * 4],
    ),
    Case(
        "bdat over the size limit",
        LHLO
        + MAIL
        + RCPT_A
        + RCPT_B
        + b"BDAT 40\r\n"
        + b"x" * 40
        + b"BDAT 30 LAST\r\n"
        + b"y" * 30,
        [
            *SMALL_LHLO,
            MAIL_OK,
            RCPT_A_OK,
            RCPT_B_OK,
            "250 2.0.0 40 octets received",
            "552 5.3.4 <a@example.com> Message exceeds the maximum message size",
            "552 5.3.4 <b@example.com> Message exceeds the maximum message size",
        ],
        Limits(max_message_size=64),
    ),
    Case(
        "bdat body refused by the application",
        LHLO + b"MAIL FROM:<tempfail@x>\r\n" + RCPT_A + b"BDAT 2\r\nhiBDAT 1 LAST\r\n!",
        [
            *ENVELOPE_OK,
            "250 2.0.0 2 octets received",
            "451 4.3.0 <a@example.com> Local error in processing, try again later",
        ],
    ),
    Case(
        "bdat nul in text body",
        ENVELOPE + b"BDAT 3 LAST\r\na\x00b",
        [*ENVELOPE_OK, "554 5.6.0 <a@example.com> Message contains NUL characters"],
    ),
    Case(
        "bdat binarymime allows nul",
        LHLO
        + b"MAIL FROM:<s@x> BODY=BINARYMIME\r\n"
        + RCPT_A
        + b"BDAT 3 LAST\r\na\x00b",
        [*ENVELOPE_OK, SAVED_A],
    ),
    Case(
        "bdat after last",
        ENVELOPE + b"BDAT 1 LAST\r\nxBDAT 1\r\ny",
        [*ENVELOPE_OK, SAVED_A, "503 5.5.1 Need MAIL command first"],
    ),
    Case(
        "rset between chunks",
        ENVELOPE + b"BDAT 1\r\nxRSET\r\nBDAT 1 LAST\r\ny",
        [
            *ENVELOPE_OK,
            "250 2.0.0 1 octets received",
            "250 2.0.0 OK",
            "503 5.5.1 Need MAIL command first",
        ],
    ),
    # XFORWARD (Postfix XFORWARD_README).
    Case("xforward before lhlo", b"XFORWARD NAME=x\r\n", ["503 5.5.1 Send LHLO first"]),
    Case(
        "xforward",
        LHLO
        + b"XFORWARD NAME=mail.example ADDR=192.0.2.1 PORT=25\r\n"
        + b"xforward proto=ESMTP helo=[UNAVAILABLE] ident=4Xyz source=REMOTE\r\n",
        [*LHLO_OK, "250 2.0.0 OK", "250 2.0.0 OK"],
    ),
    Case(
        "xforward inside a transaction",
        LHLO + MAIL + b"XFORWARD NAME=x\r\n",
        [*LHLO_OK, MAIL_OK, "503 5.5.1 XFORWARD not allowed inside MAIL"],
    ),
    Case(
        "xforward unknown attribute",
        LHLO + b"XFORWARD COLOR=red\r\n",
        [*LHLO_OK, "501 5.5.4 Syntax: XFORWARD attribute=value ..."],
    ),
    Case(
        "xforward without attributes",
        LHLO + b"XFORWARD\r\nXFORWARD NAME\r\nXFORWARD NAME=a+2\r\n",
        [*LHLO_OK, *["501 5.5.4 Syntax: XFORWARD attribute=value ..."] * 3],
    ),
]


@pytest.mark.parametrize("feed", FEEDS, ids=lambda feed: feed.__name__)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_protocol_rule(case: Case, feed: Callable[[bytes], list[bytes]]) -> None:
    """Each rule gives the same whole replies however the input is split."""
    out, _ = run(case.sent, feed, case.limits)
    assert out == lines(*case.expected)


def test_greeting_only() -> None:
    """A client that connects and leaves gets the banner and nothing else."""
    out, app = run(b"")
    assert out == b""
    assert isinstance(app.events[-1], ConnectionClosed)


def body_of(data: bytes, feed: Callable[[bytes], list[bytes]] = whole) -> bytes:
    """The body handed to the application for one DATA transaction."""
    _, app = run(ENVELOPE + b"DATA\r\n" + data, feed)
    return bytes(app.body)


BODIES = [
    ("plain", b"a\r\nb\r\n.\r\n", b"a\r\nb\r\n"),
    ("empty", b".\r\n", b""),
    ("stuffed dots", b"..\r\n...x\r\n.a.\r\n.\r\n", b".\r\n..x\r\na.\r\n"),
    ("dot after bare lf kept", b"a\n..b\r\n.\r\n", b"a\r\n..b\r\n"),
    ("bare lf normalised", b"a\nb\n\r\n.\r\n", b"a\r\nb\r\n\r\n"),
    ("bare cr normalised", b"a\rb\r\r\n.\r\n", b"a\r\nb\r\n\r\n"),
    ("smuggled end kept as text", b"x\n.\ny\r\n.\r\n", b"x\r\n.\r\ny\r\n"),
    ("dot then bare lf", b"x\r\n.\ny\r\n.\r\n", b"x\r\n\r\ny\r\n"),
]


@pytest.mark.parametrize("feed", FEEDS, ids=lambda feed: feed.__name__)
@pytest.mark.parametrize(("name", "sent", "body"), BODIES, ids=[b[0] for b in BODIES])
def test_data_body(
    name: str, sent: bytes, body: bytes, feed: Callable[[bytes], list[bytes]]
) -> None:
    """DATA bodies are unstuffed and CRLF-normalised whatever the split."""
    assert body_of(sent, feed) == body


def test_bdat_octets_verbatim() -> None:
    """BDAT chunks are taken as sent: no unstuffing, no line-end rewriting."""
    chunk = b"..x\r\n.\r\na\nb\r"
    sent = ENVELOPE + b"BDAT %d\r\n" % len(chunk) + chunk + b"BDAT 2 LAST\r\n\nz"
    for feed in FEEDS:
        _, app = run(sent, feed)
        assert bytes(app.body) == chunk + b"\nz"


def test_chunks_never_split_crlf() -> None:
    """No BodyChunk ends with CR, so a consumer may rewrite CRLF chunk by chunk."""
    for sent in (b"a\r\nb\r\n" * 50 + b".\r\n",):
        _, app = run(ENVELOPE + b"DATA\r\n" + sent, bytewise)
        chunks = [e.data for e in app.events if isinstance(e, BodyChunk)]
        assert all(not chunk.endswith(b"\r") for chunk in chunks)
    _, app = run(ENVELOPE + b"BDAT 3\r\nab\rBDAT 2 LAST\r\n\nc")
    chunks = [e.data for e in app.events if isinstance(e, BodyChunk)]
    assert chunks == [b"ab", b"\r\nc"]


def event_types(sent: bytes, limits: Limits | None = None) -> list[str]:
    """The names of the events the application saw, NeedData left out."""
    _, app = run(sent, whole, limits)
    return [type(e).__name__ for e in app.events if not isinstance(e, NeedData)]


def test_event_sequence_of_a_delivery() -> None:
    """A delivery yields the events the application needs, in order."""
    sent = ENVELOPE + b"DATA\r\nhi\r\n.\r\nQUIT\r\n"
    assert event_types(sent) == [
        "Lhlo",
        "MailFrom",
        "RcptTo",
        "BodyStart",
        "BodyChunk",
        "MessageComplete",
        "Quit",
    ]


@pytest.mark.parametrize(
    ("sent", "reason"),
    [
        (ENVELOPE + b"DATA\r\npartial line", AbortReason.CONNECTION_CLOSED),
        (ENVELOPE + b"BDAT 100\r\nshort", AbortReason.CONNECTION_CLOSED),
        (ENVELOPE + b"BDAT 1\r\nxRSET\r\n", AbortReason.RESET),
        (ENVELOPE + b"BDAT 1\r\nx" + LHLO, AbortReason.RESET),
        (ENVELOPE + b"BDAT 1\r\nxQUIT\r\n", AbortReason.QUIT),
    ],
)
def test_body_aborted(sent: bytes, reason: AbortReason) -> None:
    """An opened body that cannot complete is reported so the app can clean up."""
    _, app = run(sent)
    aborted = [e for e in app.events if isinstance(e, BodyAborted)]
    assert [e.reason for e in aborted] == [reason]
    assert aborted[0].envelope.rcpt_tos == ("a@example.com",)
    assert not any(isinstance(e, MessageComplete) for e in app.events)


def test_defective_message_completes_with_its_defect() -> None:
    """A too-big body ends in MessageComplete carrying the defect, replies sent."""
    sent = ENVELOPE + b"DATA\r\n" + b"x" * 10 + b"\r\n" + b"y" * 100 + b"\r\n.\r\n"
    _, app = run(sent, bytewise, Limits(max_message_size=64))
    complete = [e for e in app.events if isinstance(e, MessageComplete)]
    assert [e.defect for e in complete] == [BodyDefect.TOO_BIG]
    # Octets past the limit are never handed out.
    assert bytes(app.body) == (b"x" * 10 + b"\r\n" + b"y" * 100)[:64]


def test_unlimited_line_length() -> None:
    """max_line_length=0 accepts any line length."""
    sent = ENVELOPE + b"DATA\r\n" + b"x" * 5000 + b"\r\n.\r\n"
    out, _ = run(sent, whole, Limits(max_line_length=0))
    assert out == lines(*ENVELOPE_OK, GO_AHEAD, SAVED_A)


def test_xforward_attributes_reach_the_application() -> None:
    """XFORWARD values are xtext-decoded, "[UNAVAILABLE]" is None, IDENT is kept."""
    sent = (
        LHLO
        + (
            b"XFORWARD NAME=mail+2Bx.example ADDR=192.0.2.1 PORT=2525\r\n"
            b"XFORWARD PROTO=ESMTP HELO=[UNAVAILABLE] IDENT=4Xyz SOURCE=REMOTE\r\n"
            b"XFORWARD NAME=ctl+0Ax\r\n"
        )
        + MAIL
        + b"RSET\r\n"
        + MAIL
    )
    _, app = run(sent)
    first, second = [e.session.xforward for e in app.events if isinstance(e, MailFrom)]
    assert first.name == "ctl?x"
    assert (first.addr, first.port, first.proto) == ("192.0.2.1", "2525", "ESMTP")
    assert (first.helo, first.ident, first.source) == (None, "4Xyz", "REMOTE")
    # The attributes describe one transaction only; the MTA resends them.
    assert second.name is None
    assert second.ident is None


def test_mail_from_event_carries_the_envelope() -> None:
    """MAIL parameters are parsed into the envelope the application sees."""
    sent = LHLO + "MAIL FROM:<jörg@x> SIZE=1234 BODY=8BITMIME SMTPUTF8\r\n".encode()
    _, app = run(sent)
    (mail,) = [e for e in app.events if isinstance(e, MailFrom)]
    envelope = mail.envelope
    assert envelope.mail_from == "jörg@x"
    assert envelope.declared_size == 1234
    assert envelope.body_type.value == "8BITMIME"
    assert envelope.smtputf8 is True
    assert dict(envelope.mail_params) == {
        "SIZE": "1234",
        "BODY": "8BITMIME",
        "SMTPUTF8": None,
    }


def start(sent: bytes) -> LMTPConnection:
    """A greeted connection that has taken `sent` in, no event taken yet."""
    conn = LMTPConnection(HOST)
    conn.send_greeting()
    conn.receive_data(sent)
    return conn


def next_real_event(conn: LMTPConnection) -> Event:
    """The next event that is not a notification the test does not care about."""
    while True:
        event = conn.next_event()
        if isinstance(event, (RcptTo, BodyStart, MessageComplete, NeedData)):
            return event


def test_next_event_waits_for_the_answer() -> None:
    """The core reads nothing more while an RCPT awaits the application."""
    conn = start(ENVELOPE + b"NOOP\r\n")
    assert isinstance(next_real_event(conn), RcptTo)
    with pytest.raises(ProtocolUsageError):
        conn.next_event()
    conn.answer_rcpt(replies.RCPT_OK)
    assert isinstance(conn.next_event(), NeedData)
    assert conn.data_to_send().endswith(lines(RCPT_A_OK, "250 2.0.0 OK"))


def test_answers_out_of_turn_are_refused() -> None:
    """Answering something not asked, or with the wrong count, is a usage error."""
    conn = start(ENVELOPE + b"DATA\r\n.\r\n")
    with pytest.raises(ProtocolUsageError):
        conn.answer_body_start(None)
    next_real_event(conn)
    with pytest.raises(ValueError):
        conn.answer_rcpt(replies.START_INPUT)
    conn.answer_rcpt(replies.RCPT_OK)
    next_real_event(conn)
    with pytest.raises(ValueError):
        conn.answer_body_start(replies.OK)
    conn.answer_body_start(None)
    assert isinstance(next_real_event(conn), MessageComplete)
    with pytest.raises(ValueError):
        conn.answer_message([])


def test_shutdown_mid_body() -> None:
    """shutdown() sends its 421, aborts the open body and closes."""
    conn = start(ENVELOPE + b"DATA\r\nhalf")
    next_real_event(conn)
    conn.answer_rcpt(replies.RCPT_OK)
    next_real_event(conn)
    conn.answer_body_start(None)
    assert isinstance(conn.next_event(), BodyChunk)
    conn.data_to_send()
    conn.shutdown(replies.TIMEOUT)
    assert conn.data_to_send() == lines(
        "421 4.4.2 Timeout waiting for input, closing connection"
    )
    aborted = conn.next_event()
    assert isinstance(aborted, BodyAborted)
    assert aborted.reason is AbortReason.SHUTDOWN
    assert isinstance(conn.next_event(), ConnectionClosed)
    assert conn.state is State.CLOSED


def test_shutdown_before_greeting() -> None:
    """Too many sessions: the 421 replaces the greeting."""
    conn = LMTPConnection(HOST)
    conn.shutdown(replies.TOO_MANY_SESSIONS)
    assert conn.data_to_send() == lines(
        "421 4.3.2 Too many connections, try again later"
    )
    assert isinstance(conn.next_event(), ConnectionClosed)


def test_answer_after_shutdown_is_ignored() -> None:
    """An answer racing a shutdown changes nothing and raises nothing."""
    conn = start(ENVELOPE)
    next_real_event(conn)
    conn.shutdown(replies.SHUTTING_DOWN)
    conn.answer_rcpt(replies.RCPT_OK)
    assert conn.data_to_send().endswith(
        lines("421 4.3.2 Server shutting down, try again later")
    )


def test_states() -> None:
    """The state follows the dialogue."""
    conn = start(LHLO + MAIL + RCPT_A + b"DATA\r\n")
    seen = [conn.state]
    next_real_event(conn)
    seen.append(conn.state)
    conn.answer_rcpt(replies.RCPT_OK)
    next_real_event(conn)
    conn.answer_body_start(None)
    seen.append(conn.state)
    assert seen == [State.AWAIT_LHLO, State.TRANSACTION, State.DATA]
    assert conn.envelope is not None
    assert conn.envelope.rcpt_tos == ("a@example.com",)
    assert conn.session.lhlo_name == "mta.example"


def test_data_after_eof_is_a_usage_error() -> None:
    """Nothing may be received after end of file."""
    conn = start(b"NOOP\r\n")
    conn.receive_data(b"")
    with pytest.raises(ProtocolUsageError):
        conn.receive_data(b"NOOP\r\n")
