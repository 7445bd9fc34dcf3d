"""Byte-level tables for the POP3 protocol core: input bytes in, whole responses out."""

from __future__ import annotations

import base64
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from pop3proxy import responses
from pop3proxy.content import ContentEncoder, wire_size
from pop3proxy.events import (
    Authenticate,
    CloseReason,
    ConnectionClosed,
    Event,
    LoginMethod,
    NeedData,
    RetrieveMessage,
    StartTLS,
    Update,
)
from pop3proxy.maildrop import Maildrop, MessageRef
from pop3proxy.protocol import POP3Connection, ProtocolUsageError, Settings, State
from pop3proxy.responses import Response, multiline

HOST = "pop.example"
GREETING = b"+OK pop.example POP3 server ready\r\n"

# Stored messages: LF line ends, CRLF line ends, no final line end.
MSG1 = b"From: a@example.com\nSubject: one\n\nHello\n.dot line\n..two dots\nlast\n"
MSG2 = b"Subject: two\r\n\r\nBody\r\n"
MSG3 = b"Subject: three\n\nno final newline"
MESSAGES = [MSG1, MSG2, MSG3]
SIZES = [wire_size([message]) for message in MESSAGES]
TOTAL = sum(SIZES)
UIDS = ["uid-one", "uid-two", "uid-three"]

MSG1_WIRE = [
    "From: a@example.com",
    "Subject: one",
    "",
    "Hello",
    "..dot line",
    "...two dots",
    "last",
    ".",
]
MSG2_WIRE = ["Subject: two", "", "Body", "."]
MSG3_WIRE = ["Subject: three", "", "no final newline", "."]

LOGIN = b"USER alice\r\nPASS secret pw\r\n"
SEND_PASS = "+OK Send PASS"
LOGGED_IN = f"+OK Logged in, 3 messages ({TOTAL} octets)"
LOGIN_OK = [SEND_PASS, LOGGED_IN]
SIGN_OFF = "+OK pop.example POP3 server signing off"
NO_SUCH = "-ERR No such message"


def plain(authzid: str, authcid: str, password: str) -> str:
    """A Base64 SASL PLAIN response (RFC 4616)."""
    raw = f"{authzid}\0{authcid}\0{password}".encode()
    return base64.b64encode(raw).decode()


def lines(*texts: str) -> bytes:
    """Response lines as the wire carries them."""
    return "".join(f"{text}\r\n" for text in texts).encode()


def capa(*middle: str, tail: tuple[str, ...] = ()) -> list[str]:
    """A CAPA response with `middle` between the fixed capabilities."""
    return [
        "+OK Capability list follows",
        "TOP",
        "UIDL",
        *middle,
        "EXPIRE NEVER",
        *tail,
        "IMPLEMENTATION mdmail",
        ".",
    ]


BASE = ("RESP-CODES", "AUTH-RESP-CODE", "PIPELINING")
CAPA_PLAIN = capa("USER", "SASL PLAIN", *BASE)
CAPA_PLAIN_STLS = capa("USER", "SASL PLAIN", *BASE, "STLS")
CAPA_NO_PLAIN_STLS = capa(*BASE, "STLS")
CAPA_NO_PLAIN = capa(*BASE)
CAPA_LOGGED_IN = capa(*BASE)


def single(chunk: bytes) -> list[bytes]:
    """The stored message in one piece."""
    return [chunk]


@dataclass
class ScriptedApp:
    """Answers events as a small maildrop host would and records what it saw.

    alice's password is "secret pw"; "locked" finds the maildrop in use,
    "tempfail" meets a broken password database. Messages are fed with
    `chunker`; `fail_update` makes the removal in UPDATE fail.
    """

    chunker: Callable[[bytes], list[bytes]] = single
    fail_update: bool = False
    events: list[Event] = field(default_factory=list)

    def login(self, event: Authenticate) -> Maildrop | Response:
        """Check the password; answer with the maildrop or an -ERR."""
        if event.user == "locked":
            return responses.MAILDROP_IN_USE
        if event.user == "tempfail":
            return responses.AUTH_UNAVAILABLE
        if event.authzid not in ("", event.user):
            return responses.AUTH_FAILED
        if (event.user, event.password) != ("alice", "secret pw"):
            return responses.AUTH_FAILED
        return Maildrop.of(list(zip(SIZES, UIDS, strict=True)))

    def retrieve(self, conn: POP3Connection, event: RetrieveMessage) -> None:
        """Stream the stored message, stopping when the core has enough."""
        for chunk in self.chunker(MESSAGES[event.number - 1]):
            if not conn.feed_message(chunk):
                break
        conn.finish_message()

    def update(self, event: Update) -> Response | None:
        """Pretend to remove the marked messages."""
        return responses.NOT_ALL_REMOVED if self.fail_update else None


def drive(conn: POP3Connection, parts: Iterator[bytes], app: ScriptedApp) -> bytes:
    """Run the event loop the asyncio layer will run, until the connection ends."""
    out = bytearray(conn.data_to_send())
    while True:
        event = conn.next_event()
        app.events.append(event)
        out += conn.data_to_send()
        if isinstance(event, NeedData):
            conn.receive_data(next(parts, b""))
        elif isinstance(event, StartTLS):
            conn.tls_started()
        elif isinstance(event, Authenticate):
            conn.answer_auth(app.login(event))
        elif isinstance(event, RetrieveMessage):
            app.retrieve(conn, event)
        elif isinstance(event, Update):
            conn.answer_update(app.update(event))
        elif isinstance(event, ConnectionClosed):
            return bytes(out + conn.data_to_send())


def whole(data: bytes) -> list[bytes]:
    """All input in one receive call (the fully pipelined case)."""
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    """One octet per call."""
    return [data[index : index + 1] for index in range(len(data))]


def random_splits(data: bytes) -> list[bytes]:
    """Calls of random sizes, seeded by the data itself."""
    rng = random.Random(data)
    cuts = sorted(rng.sample(range(1, len(data)), min(9, len(data) - 1)))
    return [
        data[start:end]
        for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True)
    ]


FEEDS: list[Callable[[bytes], list[bytes]]] = [whole, bytewise, random_splits]


@dataclass(frozen=True)
class Options:
    """How the connection is set up."""

    plaintext: bool = True
    tls_available: bool = False
    tls_active: bool = False


def connect(options: Options = Options()) -> POP3Connection:
    """A greeted connection."""
    settings = Settings(HOST, tls_available=options.tls_available)
    conn = POP3Connection(
        settings, plaintext_allowed=options.plaintext, tls_active=options.tls_active
    )
    conn.send_greeting()
    return conn


def run(
    data: bytes,
    feed: Callable[[bytes], list[bytes]] = whole,
    options: Options = Options(),
    app: ScriptedApp | None = None,
) -> tuple[bytes, ScriptedApp]:
    """Greet, feed `data` then end of file; return what followed the greeting."""
    conn = connect(options)
    app = app or ScriptedApp()
    out = drive(conn, iter(feed(data) if data else []), app)
    assert out.startswith(GREETING)
    return out[len(GREETING) :], app


@dataclass(frozen=True)
class Case:
    """One protocol rule: what the client sends and every response line expected."""

    name: str
    sent: bytes
    expected: list[str]
    options: Options = Options()


NO_PLAIN_TLS = Options(plaintext=False, tls_available=True)
NO_PLAIN = Options(plaintext=False)
USE_STLS = "-ERR [AUTH] Plaintext authentication disallowed, use STLS first"
DISALLOWED = "-ERR [AUTH] Plaintext authentication disallowed on this connection"

CASES = [
    # AUTHORIZATION state (RFC 1939 section 4).
    Case("quit before login", b"QUIT\r\n", [SIGN_OFF]),
    Case("nothing runs after quit", b"QUIT\r\nCAPA\r\n", [SIGN_OFF]),
    Case("lower case keyword", b"quit\r\n", [SIGN_OFF]),
    Case("unknown command", b"FOO bar\r\n", ["-ERR Unknown command"]),
    Case("empty line", b"\r\n", ["-ERR Unknown command"]),
    Case("apop unsupported", b"APOP a b\r\n", ["-ERR Unknown command"]),
    Case("noop before login", b"NOOP\r\n", ["-ERR Log in first"]),
    Case("stat before login", b"STAT\r\n", ["-ERR Log in first"]),
    Case("retr before login", b"RETR 1\r\n", ["-ERR Log in first"]),
    Case("nul in command", b"USER a\x00b\r\n", ["-ERR Invalid characters in command"]),
    Case("bare lf in command", b"QUIT\nx\r\n", ["-ERR Invalid characters in command"]),
    Case("invalid utf-8", b"USER \xff\r\n", ["-ERR Invalid characters in command"]),
    # USER and PASS (RFC 1939 section 7).
    Case("login", LOGIN, LOGIN_OK),
    Case("user without name", b"USER\r\n", ["-ERR Syntax: USER name"]),
    Case("pass without user", b"PASS x\r\n", ["-ERR Send USER first"]),
    Case(
        "pass without password",
        b"USER alice\r\nPASS\r\n",
        [SEND_PASS, "-ERR Syntax: PASS password"],
    ),
    Case(
        "wrong password",
        b"USER alice\r\nPASS nope\r\n",
        [SEND_PASS, "-ERR [AUTH] Authentication failed"],
    ),
    Case(
        "password keeps its spaces",
        b"USER alice\r\nPASS secret pw \r\n",
        [SEND_PASS, "-ERR [AUTH] Authentication failed"],
    ),
    Case(
        "unknown user gets the same reply",
        b"USER nobody\r\nPASS secret pw\r\n",
        [SEND_PASS, "-ERR [AUTH] Authentication failed"],
    ),
    Case(
        "pass must follow user at once",
        b"USER alice\r\nCAPA\r\nPASS secret pw\r\n",
        [SEND_PASS, *CAPA_PLAIN, "-ERR Send USER first"],
    ),
    Case(
        "failed pass needs a new user",
        b"USER alice\r\nPASS nope\r\nPASS secret pw\r\n",
        [SEND_PASS, "-ERR [AUTH] Authentication failed", "-ERR Send USER first"],
    ),
    Case(
        "retry after failure",
        b"USER alice\r\nPASS nope\r\n" + LOGIN,
        [SEND_PASS, "-ERR [AUTH] Authentication failed", *LOGIN_OK],
    ),
    Case(
        "maildrop in use",
        b"USER locked\r\nPASS x\r\n",
        [SEND_PASS, "-ERR [IN-USE] Maildrop is in use by another session"],
    ),
    Case(
        "password database down",
        b"USER tempfail\r\nPASS x\r\n",
        [SEND_PASS, "-ERR [SYS/TEMP] Authentication temporarily unavailable"],
    ),
    Case(
        "user after login",
        LOGIN + b"USER bob\r\n",
        [*LOGIN_OK, "-ERR Already logged in"],
    ),
    Case(
        "auth after login", LOGIN + b"AUTH\r\n", [*LOGIN_OK, "-ERR Already logged in"]
    ),
    # AUTH (RFC 5034 section 4).
    Case("auth lists mechanisms", b"AUTH\r\n", ["+OK", "PLAIN", "."]),
    Case(
        "auth plain initial response",
        f"AUTH PLAIN {plain('', 'alice', 'secret pw')}\r\n".encode(),
        [LOGGED_IN],
    ),
    Case(
        "auth mechanism in lower case",
        f"auth plain {plain('', 'alice', 'secret pw')}\r\n".encode(),
        [LOGGED_IN],
    ),
    Case(
        "auth plain continuation",
        f"AUTH PLAIN\r\n{plain('', 'alice', 'secret pw')}\r\n".encode(),
        ["+ ", LOGGED_IN],
    ),
    Case(
        "auth plain with own authzid",
        f"AUTH PLAIN {plain('alice', 'alice', 'secret pw')}\r\n".encode(),
        [LOGGED_IN],
    ),
    Case(
        "auth plain as another user is the app's call",
        f"AUTH PLAIN {plain('bob', 'alice', 'secret pw')}\r\n".encode(),
        ["-ERR [AUTH] Authentication failed"],
    ),
    Case(
        "auth plain wrong password",
        f"AUTH PLAIN {plain('', 'alice', 'nope')}\r\n".encode(),
        ["-ERR [AUTH] Authentication failed"],
    ),
    Case(
        "auth cancelled",
        b"AUTH PLAIN\r\n*\r\n",
        ["+ ", "-ERR Authentication cancelled"],
    ),
    Case("bad base64", b"AUTH PLAIN AGFsaWNl!\r\n", ["-ERR Invalid base64 data"]),
    Case("bad base64 padding", b"AUTH PLAIN =AAA\r\n", ["-ERR Invalid base64 data"]),
    Case(
        "bad base64 continuation",
        b"AUTH PLAIN\r\n%%%\r\n",
        ["+ ", "-ERR Invalid base64 data"],
    ),
    Case(
        "non-ascii continuation",
        b"AUTH PLAIN\r\n\xc3\xa9\r\n",
        ["+ ", "-ERR Invalid base64 data"],
    ),
    Case(
        "empty initial response", b"AUTH PLAIN =\r\n", ["-ERR Malformed PLAIN response"]
    ),
    Case(
        "empty continuation",
        b"AUTH PLAIN\r\n\r\n",
        ["+ ", "-ERR Malformed PLAIN response"],
    ),
    Case(
        "plain without password",
        f"AUTH PLAIN {plain('', 'alice', '')}\r\n".encode(),
        ["-ERR Malformed PLAIN response"],
    ),
    Case(
        "plain without nul",
        b"AUTH PLAIN " + base64.b64encode(b"alice") + b"\r\n",
        ["-ERR Malformed PLAIN response"],
    ),
    Case(
        "plain with control character in name",
        b"AUTH PLAIN " + plain("", "al\nice", "x").encode() + b"\r\n",
        ["-ERR Malformed PLAIN response"],
    ),
    Case(
        "unknown mechanism",
        b"AUTH CRAM-MD5\r\n",
        ["-ERR Unsupported authentication mechanism"],
    ),
    Case(
        "auth with extra words",
        b"AUTH PLAIN a b\r\n",
        ["-ERR Syntax: AUTH [mechanism [initial-response]]"],
    ),
    Case(
        "continuation is no command",
        b"AUTH PLAIN\r\nQUIT\r\nQUIT\r\n",
        ["+ ", "-ERR Malformed PLAIN response", SIGN_OFF],
    ),
    # Cleartext policy (RFC 2595 section 2.3 and 4).
    Case("user refused without tls", b"USER alice\r\n", [USE_STLS], NO_PLAIN_TLS),
    Case("pass refused without tls", b"PASS secret pw\r\n", [USE_STLS], NO_PLAIN_TLS),
    Case(
        "auth plain refused without tls",
        f"AUTH PLAIN {plain('', 'alice', 'secret pw')}\r\n".encode(),
        [USE_STLS],
        NO_PLAIN_TLS,
    ),
    Case("auth plain challenge refused", b"AUTH PLAIN\r\n", [USE_STLS], NO_PLAIN_TLS),
    Case("user refused, no tls to offer", b"USER alice\r\n", [DISALLOWED], NO_PLAIN),
    Case("no mechanisms without tls", b"AUTH\r\n", ["+OK", "."], NO_PLAIN_TLS),
    Case("capa offers stls", b"CAPA\r\n", CAPA_NO_PLAIN_STLS, NO_PLAIN_TLS),
    Case("capa without plaintext", b"CAPA\r\n", CAPA_NO_PLAIN, NO_PLAIN),
    Case("capa plaintext", b"CAPA\r\n", CAPA_PLAIN),
    Case(
        "capa plaintext and stls",
        b"CAPA\r\n",
        CAPA_PLAIN_STLS,
        Options(tls_available=True),
    ),
    Case(
        "capa under implicit tls",
        b"CAPA\r\n",
        CAPA_PLAIN,
        Options(tls_available=True, tls_active=True),
    ),
    Case(
        "capa after login",
        LOGIN + b"CAPA\r\n",
        [*LOGIN_OK, *CAPA_LOGGED_IN],
        Options(tls_available=True),
    ),
    # STLS (RFC 2595 section 4).
    Case("stls unavailable", b"STLS\r\n", ["-ERR TLS is not available"]),
    Case(
        "stls under implicit tls",
        b"STLS\r\n",
        ["-ERR TLS is already active"],
        Options(tls_available=True, tls_active=True),
    ),
    Case(
        "stls with argument",
        b"STLS x\r\n",
        ["-ERR Syntax error"],
        Options(tls_available=True),
    ),
    Case(
        "stls after login",
        LOGIN + b"STLS\r\n",
        [*LOGIN_OK, "-ERR Already logged in"],
        Options(tls_available=True),
    ),
    # TRANSACTION state (RFC 1939 sections 5 and 7).
    Case("stat", LOGIN + b"STAT\r\n", [*LOGIN_OK, f"+OK 3 {TOTAL}"]),
    Case("stat with argument", LOGIN + b"STAT 1\r\n", [*LOGIN_OK, "-ERR Syntax error"]),
    Case(
        "list",
        LOGIN + b"LIST\r\n",
        [
            *LOGIN_OK,
            f"+OK 3 messages ({TOTAL} octets)",
            f"1 {SIZES[0]}",
            f"2 {SIZES[1]}",
            f"3 {SIZES[2]}",
            ".",
        ],
    ),
    Case("list one", LOGIN + b"LIST 2\r\n", [*LOGIN_OK, f"+OK 2 {SIZES[1]}"]),
    Case("list zero", LOGIN + b"LIST 0\r\n", [*LOGIN_OK, NO_SUCH]),
    Case("list past the end", LOGIN + b"LIST 4\r\n", [*LOGIN_OK, NO_SUCH]),
    Case(
        "list not a number",
        LOGIN + b"LIST one\r\n",
        [*LOGIN_OK, "-ERR Invalid message number"],
    ),
    Case(
        "list negative",
        LOGIN + b"LIST -1\r\n",
        [*LOGIN_OK, "-ERR Invalid message number"],
    ),
    Case(
        "list huge",
        LOGIN + b"LIST 99999999999\r\n",
        [*LOGIN_OK, "-ERR Invalid message number"],
    ),
    Case("list two numbers", LOGIN + b"LIST 1 2\r\n", [*LOGIN_OK, "-ERR Syntax error"]),
    Case(
        "uidl",
        LOGIN + b"UIDL\r\n",
        [
            *LOGIN_OK,
            "+OK Unique-id listing follows",
            "1 uid-one",
            "2 uid-two",
            "3 uid-three",
            ".",
        ],
    ),
    Case("uidl one", LOGIN + b"UIDL 3\r\n", [*LOGIN_OK, "+OK 3 uid-three"]),
    Case("uidl missing", LOGIN + b"UIDL 9\r\n", [*LOGIN_OK, NO_SUCH]),
    Case("noop", LOGIN + b"NOOP\r\n", [*LOGIN_OK, "+OK"]),
    Case(
        "retr",
        LOGIN + b"RETR 1\r\n",
        [*LOGIN_OK, f"+OK {SIZES[0]} octets", *MSG1_WIRE],
    ),
    Case(
        "retr crlf message",
        LOGIN + b"RETR 2\r\n",
        [*LOGIN_OK, f"+OK {SIZES[1]} octets", *MSG2_WIRE],
    ),
    Case(
        "retr adds the missing line end",
        LOGIN + b"RETR 3\r\n",
        [*LOGIN_OK, f"+OK {SIZES[2]} octets", *MSG3_WIRE],
    ),
    Case("retr missing", LOGIN + b"RETR 4\r\n", [*LOGIN_OK, NO_SUCH]),
    Case("retr without number", LOGIN + b"RETR\r\n", [*LOGIN_OK, "-ERR Syntax error"]),
    Case(
        "top zero lines",
        LOGIN + b"TOP 1 0\r\n",
        [*LOGIN_OK, "+OK Top of message follows", *MSG1_WIRE[:3], "."],
    ),
    Case(
        "top two lines",
        LOGIN + b"TOP 1 2\r\n",
        [*LOGIN_OK, "+OK Top of message follows", *MSG1_WIRE[:5], "."],
    ),
    Case(
        "top more lines than the body",
        LOGIN + b"TOP 1 100\r\n",
        [*LOGIN_OK, "+OK Top of message follows", *MSG1_WIRE],
    ),
    Case(
        "top of a message without final line end",
        LOGIN + b"TOP 3 5\r\n",
        [*LOGIN_OK, "+OK Top of message follows", *MSG3_WIRE],
    ),
    Case(
        "top without count",
        LOGIN + b"TOP 1\r\n",
        [*LOGIN_OK, "-ERR Syntax: TOP message lines"],
    ),
    Case(
        "top negative count",
        LOGIN + b"TOP 1 -1\r\n",
        [*LOGIN_OK, "-ERR Syntax: TOP message lines"],
    ),
    Case("top missing", LOGIN + b"TOP 7 1\r\n", [*LOGIN_OK, NO_SUCH]),
    # Deletion marks (RFC 1939 section 5).
    Case("dele", LOGIN + b"DELE 1\r\n", [*LOGIN_OK, "+OK Message 1 deleted"]),
    Case(
        "dele twice",
        LOGIN + b"DELE 1\r\nDELE 1\r\n",
        [*LOGIN_OK, "+OK Message 1 deleted", NO_SUCH],
    ),
    Case("dele missing", LOGIN + b"DELE 5\r\n", [*LOGIN_OK, NO_SUCH]),
    Case(
        "deleted message is gone",
        LOGIN + b"DELE 2\r\nLIST 2\r\nRETR 2\r\nTOP 2 0\r\nUIDL 2\r\n",
        [*LOGIN_OK, "+OK Message 2 deleted", NO_SUCH, NO_SUCH, NO_SUCH, NO_SUCH],
    ),
    Case(
        "stat and list skip deleted",
        LOGIN + b"DELE 2\r\nSTAT\r\nLIST\r\nUIDL\r\n",
        [
            *LOGIN_OK,
            "+OK Message 2 deleted",
            f"+OK 2 {SIZES[0] + SIZES[2]}",
            f"+OK 2 messages ({SIZES[0] + SIZES[2]} octets)",
            f"1 {SIZES[0]}",
            f"3 {SIZES[2]}",
            ".",
            "+OK Unique-id listing follows",
            "1 uid-one",
            "3 uid-three",
            ".",
        ],
    ),
    Case(
        "rset unmarks",
        LOGIN + b"DELE 1\r\nDELE 3\r\nRSET\r\nSTAT\r\nLIST 1\r\n",
        [
            *LOGIN_OK,
            "+OK Message 1 deleted",
            "+OK Message 3 deleted",
            f"+OK Maildrop has 3 messages ({TOTAL} octets)",
            f"+OK 3 {TOTAL}",
            f"+OK 1 {SIZES[0]}",
        ],
    ),
    Case("quit after login", LOGIN + b"QUIT\r\n", [*LOGIN_OK, SIGN_OFF]),
    Case(
        "nothing runs after quit in transaction",
        LOGIN + b"QUIT\r\nDELE 1\r\n",
        [*LOGIN_OK, SIGN_OFF],
    ),
    # Line length (RFC 2449 section 4: 255 octets with CRLF; AUTH longer).
    Case("command of 255 octets", b"USER " + b"a" * 248 + b"\r\n", [SEND_PASS]),
    Case(
        "command of 256 octets is skipped",
        b"USER " + b"a" * 249 + b"\r\nQUIT\r\n",
        ["-ERR Line too long", SIGN_OFF],
    ),
    Case(
        "huge line runs nothing",
        b"QUIT" + b"\r" * 3000 + b"QUIT\r\nCAPA\r\n",
        ["-ERR Line too long", *CAPA_PLAIN],
    ),
    Case(
        "auth line over 255 octets",
        f"AUTH PLAIN {plain('', 'alice', 'secret pw' + ' ' * 200)}\r\n".encode(),
        ["-ERR [AUTH] Authentication failed"],
    ),
    Case(
        "auth continuation over 255 octets",
        f"AUTH PLAIN\r\n{plain('a' * 255, 'alice', 'p' * 255)}\r\n".encode(),
        ["+ ", "-ERR [AUTH] Authentication failed"],
    ),
    Case(
        "auth line over 2048 octets",
        b"AUTH PLAIN " + b"A" * 2040 + b"\r\nQUIT\r\n",
        ["-ERR Line too long", SIGN_OFF],
    ),
    Case(
        "long line ends the sasl exchange",
        b"AUTH PLAIN\r\n" + b"A" * 3000 + b"\r\nQUIT\r\n",
        ["+ ", "-ERR Line too long", SIGN_OFF],
    ),
]


@pytest.mark.parametrize("feed", FEEDS, ids=lambda feed: feed.__name__)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_protocol_table(case: Case, feed: Callable[[bytes], list[bytes]]) -> None:
    """Each rule holds however the input is split across receive calls."""
    out, _ = run(case.sent, feed, case.options)
    assert out == lines(*case.expected)


@pytest.mark.parametrize("chunker", FEEDS, ids=lambda feed: feed.__name__)
def test_retr_any_chunking(chunker: Callable[[bytes], list[bytes]]) -> None:
    """The app may feed the stored message in any chunks: the wire is the same."""
    app = ScriptedApp(chunker=chunker)
    out, _ = run(LOGIN + b"RETR 1\r\nTOP 1 1\r\nRETR 3\r\n", app=app)
    assert out == lines(
        *LOGIN_OK,
        f"+OK {SIZES[0]} octets",
        *MSG1_WIRE,
        "+OK Top of message follows",
        *MSG1_WIRE[:4],
        ".",
        f"+OK {SIZES[2]} octets",
        *MSG3_WIRE,
    )


def test_pipelining_runs_in_order() -> None:
    """Every command of one receive call runs in turn (RFC 2449 section 6.6)."""
    sent = LOGIN + b"STAT\r\nDELE 1\r\nRETR 2\r\nSTAT\r\nRSET\r\nNOOP\r\nQUIT\r\n"
    out, app = run(sent)
    assert out == lines(
        *LOGIN_OK,
        f"+OK 3 {TOTAL}",
        "+OK Message 1 deleted",
        f"+OK {SIZES[1]} octets",
        *MSG2_WIRE,
        f"+OK 2 {SIZES[1] + SIZES[2]}",
        f"+OK Maildrop has 3 messages ({TOTAL} octets)",
        "+OK",
        SIGN_OFF,
    )
    assert [type(event) for event in app.events if not isinstance(event, NeedData)] == [
        Authenticate,
        RetrieveMessage,
        Update,
        ConnectionClosed,
    ]


# Byte-stuffing and line ends across chunk boundaries (RFC 1939 section 3).

NASTY = (
    b".starts with a dot\n"
    b"Subject: x\r\n"
    b"\n"
    b"..\r\n"
    b".\n"
    b"a lone\rcarriage return\n"
    b"\r\n"
    b".\r\n"
    b"ends with cr\r"
)


def reference_wire(message: bytes) -> bytes:
    """The wire form computed line by line, the slow and obvious way."""
    body = message.replace(b"\r\n", b"\n")
    parts = body.split(b"\n")
    if parts[-1] == b"":
        parts.pop()
    stuffed = [b"." + part if part.startswith(b".") else part for part in parts]
    return b"".join(part + b"\r\n" for part in stuffed) + b".\r\n"


def encode(message: bytes, chunks: list[bytes], body_lines: int | None = None) -> bytes:
    """Run the encoder over `chunks` of `message`."""
    assert b"".join(chunks) == message
    encoder = ContentEncoder(body_lines)
    out = b"".join(encoder.encode(chunk) for chunk in chunks)
    return out + encoder.finish()


@pytest.mark.parametrize("message", [MSG1, MSG2, MSG3, NASTY, b"", b"\n", b"."])
def test_stuffing_matches_reference_in_any_split(message: bytes) -> None:
    """Byte by byte, in random splits or whole: the same stuffed CRLF output."""
    expected = reference_wire(message)
    assert encode(message, [message]) == expected
    assert encode(message, bytewise(message)) == expected
    rng = random.Random(7)
    for _ in range(50):
        cuts = sorted(
            rng.sample(range(1, max(len(message), 2)), min(5, len(message) // 2))
        )
        bounds = zip([0, *cuts], [*cuts, len(message)], strict=True)
        chunks = [message[start:end] for start, end in bounds]
        assert encode(message, chunks) == expected


def test_octets_match_wire_size() -> None:
    """Octets sent before stuffing equal the LIST size (RFC 1939 section 11)."""
    for message in (MSG1, MSG2, NASTY):
        encoder = ContentEncoder()
        for chunk in bytewise(message):
            encoder.encode(chunk)
        encoder.finish()
        assert encoder.octets == wire_size([message]) == wire_size(bytewise(message))


def test_wire_size_counts() -> None:
    """LF counts two octets, CRLF two, a lone CR one; stuffing nothing."""
    assert wire_size([b"a\nb\r\n"]) == 6
    assert wire_size([b"a\r", b"\nb"]) == 4
    assert wire_size([b"a\r", b"b\n"]) == 5
    assert wire_size([b".\n"]) == 3


def test_top_across_chunk_boundaries() -> None:
    """TOP finds the header end and counts body lines wherever chunks split."""
    message = b"A: 1\nB: 2\n\nline 1\n.line 2\nline 3\n"
    for body_lines, kept in ((0, 3), (1, 4), (2, 5), (3, 6), (9, 6)):
        wanted = message.split(b"\n")[:kept]
        expected = reference_wire(b"\n".join(wanted) + b"\n")
        assert encode(message, [message], body_lines) == expected
        assert encode(message, bytewise(message), body_lines) == expected


def test_top_without_headers_or_body() -> None:
    """A message starting with the empty line; a message with no empty line."""
    assert (
        encode(b"\nbody\nmore\n", [b"\n", b"body\nmore\n"], 1) == b"\r\nbody\r\n.\r\n"
    )
    assert (
        encode(b"A: 1\nB: 2\n", [b"A: 1\n", b"B: 2\n"], 0) == b"A: 1\r\nB: 2\r\n.\r\n"
    )


def test_top_stops_wanting_data() -> None:
    """feed_message() says False once TOP has its lines; the rest is ignored."""
    conn = login()
    conn.receive_data(b"TOP 1 0\r\n")
    assert isinstance(conn.next_event(), RetrieveMessage)
    assert conn.feed_message(b"A: 1\n") is True
    assert conn.feed_message(b"\nbody\n") is False
    assert conn.feed_message(b"more body\n") is False
    conn.finish_message()
    assert conn.data_to_send() == lines("+OK Top of message follows", "A: 1", "", ".")
    assert conn.stats.top_count == 1
    assert conn.stats.top_octets == 8


# STLS (RFC 2595 section 4) and the cleartext policy.


def test_stls_discards_pipelined_input() -> None:
    """Commands sent in clear behind STLS never run after the handshake."""
    conn = connect(NO_PLAIN_TLS)
    conn.data_to_send()
    conn.receive_data(b"STLS\r\nUSER alice\r\nPASS secret pw\r\n")
    assert isinstance(conn.next_event(), StartTLS)
    assert conn.data_to_send() == lines("+OK Begin TLS negotiation now")
    assert conn.pending_input == 0
    with pytest.raises(ProtocolUsageError):
        conn.next_event()

    # Cleartext arriving before the handshake ends is dropped too.
    conn.receive_data(b"QUIT\r\n")
    assert conn.pending_input == 0
    conn.tls_started()
    assert isinstance(conn.next_event(), NeedData)
    assert conn.data_to_send() == b""

    conn.receive_data(b"CAPA\r\nSTLS\r\n")
    assert isinstance(conn.next_event(), NeedData)
    assert conn.data_to_send() == lines(*CAPA_PLAIN, "-ERR TLS is already active")
    assert conn.tls_active


def test_stls_then_login() -> None:
    """After the handshake, USER/PASS works in a fresh AUTHORIZATION state."""
    app = ScriptedApp()
    out, _ = run(b"USER alice\r\nSTLS\r\n", options=NO_PLAIN_TLS, app=app)
    assert out == lines(USE_STLS, "+OK Begin TLS negotiation now")

    conn = connect(NO_PLAIN_TLS)
    parts = iter([b"STLS\r\n", LOGIN + b"STAT\r\nQUIT\r\n"])
    out = drive(conn, parts, ScriptedApp())
    assert out == GREETING + lines(
        "+OK Begin TLS negotiation now", *LOGIN_OK, f"+OK 3 {TOTAL}", SIGN_OFF
    )


def test_tls_started_out_of_turn() -> None:
    """tls_started() without STLS is an application bug."""
    conn = connect(NO_PLAIN_TLS)
    with pytest.raises(ProtocolUsageError):
        conn.tls_started()


def test_failed_handshake() -> None:
    """A failed handshake is connection_lost(): the connection just closes."""
    conn = connect(NO_PLAIN_TLS)
    conn.receive_data(b"STLS\r\n")
    assert isinstance(conn.next_event(), StartTLS)
    conn.connection_lost()
    event = conn.next_event()
    assert isinstance(event, ConnectionClosed)
    assert event.reason is CloseReason.DROPPED
    assert not event.authenticated


# UPDATE state (RFC 1939 section 6) and connection ends.


def test_update_gets_marked_messages() -> None:
    """QUIT after DELE hands the marked messages over for removal."""
    out, app = run(LOGIN + b"DELE 3\r\nDELE 1\r\nQUIT\r\n")
    assert out == lines(
        *LOGIN_OK, "+OK Message 3 deleted", "+OK Message 1 deleted", SIGN_OFF
    )
    updates = [event for event in app.events if isinstance(event, Update)]
    assert updates == [Update((MessageRef(1, "uid-one"), MessageRef(3, "uid-three")))]
    closed = app.events[-1]
    assert isinstance(closed, ConnectionClosed)
    assert closed.reason is CloseReason.QUIT
    assert closed.stats.deleted == 2


def test_update_after_rset_is_empty() -> None:
    """RSET leaves nothing to remove; Update still comes, to release the drop."""
    _, app = run(LOGIN + b"DELE 1\r\nRSET\r\nQUIT\r\n")
    assert [event for event in app.events if isinstance(event, Update)] == [Update(())]


def test_update_failure() -> None:
    """Removal failing gives the -ERR of RFC 1939 section 6, then the close."""
    out, app = run(LOGIN + b"DELE 1\r\nQUIT\r\n", app=ScriptedApp(fail_update=True))
    assert out == lines(
        *LOGIN_OK,
        "+OK Message 1 deleted",
        "-ERR [SYS/TEMP] Some deleted messages not removed",
    )
    closed = app.events[-1]
    assert isinstance(closed, ConnectionClosed)
    assert closed.stats.deleted == 0


def test_drop_without_quit_deletes_nothing() -> None:
    """End of file in TRANSACTION: no Update, a DROPPED close (RFC 1939 section 6)."""
    out, app = run(LOGIN + b"DELE 1\r\nDELE 2\r\n")
    assert out == lines(*LOGIN_OK, "+OK Message 1 deleted", "+OK Message 2 deleted")
    assert not any(isinstance(event, Update) for event in app.events)
    closed = app.events[-1]
    assert isinstance(closed, ConnectionClosed)
    assert closed.reason is CloseReason.DROPPED
    assert closed.authenticated
    assert closed.stats.deleted == 0


def test_connection_lost_during_update_completes_it() -> None:
    """The client sent QUIT, so UPDATE still finishes after the drop."""
    conn = login()
    conn.receive_data(b"DELE 1\r\nQUIT\r\n")
    assert isinstance(conn.next_event(), Update)
    conn.connection_lost()
    conn.answer_update(None)
    event = conn.next_event()
    assert isinstance(event, ConnectionClosed)
    assert event.reason is CloseReason.QUIT


def test_connection_lost_while_authenticating() -> None:
    """A late answer to a dropped connection is ignored."""
    conn = connect()
    conn.receive_data(LOGIN)
    assert isinstance(conn.next_event(), Authenticate)
    conn.connection_lost()
    conn.answer_auth(responses.AUTH_FAILED)
    event = conn.next_event()
    assert isinstance(event, ConnectionClosed)
    assert event.reason is CloseReason.DROPPED
    assert conn.next_event() == event


def test_shutdown() -> None:
    """shutdown() sends its -ERR, or nothing for the autologout timer."""
    conn = login()
    conn.shutdown(responses.SHUTTING_DOWN)
    assert conn.data_to_send() == lines(
        "-ERR [SYS/TEMP] Server shutting down, try again later"
    )
    event = conn.next_event()
    assert isinstance(event, ConnectionClosed)
    assert event.reason is CloseReason.SHUTDOWN

    conn = login()
    conn.shutdown()
    assert conn.data_to_send() == b""


# Message retrieval failures.


def test_abort_before_data_sends_error() -> None:
    """A message that vanished gets -ERR and the session goes on."""
    conn = login()
    conn.receive_data(b"RETR 1\r\nNOOP\r\n")
    assert isinstance(conn.next_event(), RetrieveMessage)
    conn.abort_message(responses.MESSAGE_UNAVAILABLE)
    assert isinstance(conn.next_event(), NeedData)
    assert conn.data_to_send() == lines(
        "-ERR [SYS/TEMP] Message unavailable, try again later", "+OK"
    )
    assert conn.stats.retr_count == 0


def test_abort_mid_message_closes() -> None:
    """Once the +OK is out, only closing keeps a truncated message from counting."""
    conn = login()
    conn.receive_data(b"RETR 1\r\nDELE 1\r\nQUIT\r\n")
    assert isinstance(conn.next_event(), RetrieveMessage)
    conn.feed_message(b"Subject: x\n")
    conn.abort_message(responses.MESSAGE_UNAVAILABLE)
    assert conn.data_to_send() == lines(f"+OK {SIZES[0]} octets", "Subject: x")
    event = conn.next_event()
    assert isinstance(event, ConnectionClosed)
    assert event.reason is CloseReason.ABORTED
    assert conn.feed_message(b"more") is False


def test_shutdown_mid_message_sends_nothing_more() -> None:
    """No -ERR can interrupt a multi-line response."""
    conn = login()
    conn.receive_data(b"RETR 1\r\n")
    assert isinstance(conn.next_event(), RetrieveMessage)
    conn.feed_message(b"Subject: x\n")
    conn.shutdown(responses.SHUTTING_DOWN)
    assert conn.data_to_send() == lines(f"+OK {SIZES[0]} octets", "Subject: x")


# Application mistakes and records.


def login() -> POP3Connection:
    """A connection logged in as alice, output drained."""
    conn = connect()
    conn.receive_data(LOGIN)
    event = conn.next_event()
    assert isinstance(event, Authenticate)
    conn.answer_auth(ScriptedApp().login(event))
    assert isinstance(conn.next_event(), NeedData)
    conn.data_to_send()
    assert conn.state is State.TRANSACTION
    return conn


def test_answers_out_of_turn() -> None:
    """Calls the core does not expect are application bugs."""
    conn = connect()
    conn.receive_data(LOGIN)
    assert isinstance(conn.next_event(), Authenticate)
    with pytest.raises(ProtocolUsageError):
        conn.next_event()
    with pytest.raises(ProtocolUsageError):
        conn.finish_message()
    with pytest.raises(ValueError):
        conn.answer_auth(responses.OK)
    with pytest.raises(ProtocolUsageError):
        conn.answer_update(None)


def test_authenticate_event() -> None:
    """The event carries who, how and for whom, and never shows the password."""
    conn = connect()
    conn.receive_data(f"AUTH PLAIN {plain('bob', 'alice', 'secret pw')}\r\n".encode())
    event = conn.next_event()
    assert event == Authenticate("alice", "secret pw", "bob", LoginMethod.SASL_PLAIN)
    assert "secret" not in repr(event)


def test_failed_logins_counted() -> None:
    """The core counts refusals; what to do about many is the app's call."""
    conn = connect()
    conn.receive_data(b"USER a\r\nPASS b\r\nUSER a\r\nPASS c\r\n")
    for _ in range(2):
        assert isinstance(conn.next_event(), Authenticate)
        conn.answer_auth(responses.AUTH_FAILED)
    assert conn.failed_logins == 2
    assert conn.user is None


def test_session_summary() -> None:
    """The logout line counts RETR, TOP and removals like Dovecot's."""
    _, app = run(LOGIN + b"RETR 1\r\nRETR 2\r\nTOP 1 0\r\nDELE 2\r\nQUIT\r\n")
    closed = app.events[-1]
    assert isinstance(closed, ConnectionClosed)
    top = len(b"From: a@example.com\r\nSubject: one\r\n\r\n")
    assert closed.stats.summary() == (
        f"top=1/{top}, retr=2/{SIZES[0] + SIZES[1]}, del=1/3, size={TOTAL}"
    )


def test_records_refuse_bad_values() -> None:
    """Responses never carry line breaks; listings hold valid unique-ids."""
    with pytest.raises(ValueError):
        Response(False, "bad\r\nQUIT")
    with pytest.raises(ValueError):
        Response(False, "text", "BAD]CODE")
    with pytest.raises(ValueError):
        Maildrop.of([(10, "has space")])
    with pytest.raises(ValueError):
        Maildrop.of([(10, "ok"), (-1, "negative")])
    with pytest.raises(ValueError):
        Maildrop.of([(10, "x" * 71)])
    with pytest.raises(ValueError):
        Maildrop.of([(1, "same"), (2, "same")])
    assert Response(False, "x", "SYS/TEMP").to_bytes() == b"-ERR [SYS/TEMP] x\r\n"


def test_capa_settings() -> None:
    """LOGIN-DELAY, EXPIRE days and no IMPLEMENTATION, as configured."""
    settings = Settings(HOST, implementation="", login_delay=900, expire_days=30)
    conn = POP3Connection(settings, plaintext_allowed=True)
    conn.receive_data(b"CAPA\r\n")
    assert isinstance(conn.next_event(), NeedData)
    assert conn.data_to_send() == lines(
        "+OK Capability list follows",
        "TOP",
        "UIDL",
        "USER",
        "SASL PLAIN",
        *BASE,
        "EXPIRE 30",
        "LOGIN-DELAY 900",
        ".",
    )


def test_session_acts_as_authzid() -> None:
    """After AUTH PLAIN with an authzid the app accepted, the session is that user."""
    conn = connect()
    conn.receive_data(f"AUTH PLAIN {plain('shared', 'alice', 'pw')}\r\n".encode())
    assert isinstance(conn.next_event(), Authenticate)
    conn.answer_auth(Maildrop(()))
    assert isinstance(conn.next_event(), NeedData)
    assert conn.user == "shared"
    assert conn.data_to_send() == GREETING + lines(
        "+OK Logged in, 0 messages (0 octets)"
    )


def test_multiline_stuffs_dots_and_ends_with_one() -> None:
    """RFC 1939 section 3: a line starting with "." gets another; "." ends it."""
    head = Response(True, "list")
    assert multiline(head, []) == b"+OK list\r\n.\r\n"
    assert multiline(head, ["1 10", "2 20"]) == b"+OK list\r\n1 10\r\n2 20\r\n.\r\n"
    assert multiline(head, [".a", "b", ".", ""]) == (
        b"+OK list\r\n..a\r\nb\r\n..\r\n\r\n.\r\n"
    )
    assert multiline(head, ["", "x."]) == b"+OK list\r\n\r\nx.\r\n.\r\n"


@pytest.mark.parametrize(
    "message",
    [MSG1, MSG2, MSG3, NASTY, b"", b"\n", b".", b"a\r", b"a\n\r", b"x\r\ny", b".\r\n."],
)
def test_a_message_sent_whole_is_the_same_as_in_chunks(message: bytes) -> None:
    """encode_whole() gives the octets and the count that encode() + finish() do."""
    whole = ContentEncoder()
    wire = whole.encode_whole(message)
    chunked = ContentEncoder()
    assert wire == b"".join(map(chunked.encode, bytewise(message))) + chunked.finish()
    assert whole.octets == chunked.octets == wire_size([message])
