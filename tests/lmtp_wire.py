"""A raw LMTP client and shared helpers for end-to-end tests of a real lmtpd."""

import re
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from tests.lmtp_process import LmtpProcess

DEADLINE = 10.0
HOSTNAME = "lmtp.test.example"
GREETING = f"220 {HOSTNAME} LMTP server ready"
MAIL_OK = "250 2.1.0 Sender OK"
GO_AHEAD = "354 Start mail input; end with <CRLF>.<CRLF>"
OK = "250 2.0.0 OK"
SHUTTING_DOWN = "421 4.3.2 Server shutting down, try again later"
NO_SUCH_USER = "550 5.1.1 <{}> User unknown"
TOO_BIG = "552 5.3.4 <{}> Message exceeds the maximum message size"
MAILBOX_FULL = "452 4.2.2 <{}> Mailbox full"

SENDER = "sender@outside.example"
BODY = b"Subject: hello\r\n\r\nbody\r\n"
STORED = b"Subject: hello\n\nbody\n"
RETURN_PATH = b"Return-Path: <sender@outside.example>\n"
DELIVERY_LINE = re.compile(
    r"\S+ lmtpd\[\d+\]: (?P<queue>\S+): to=<(?P<to>[^>]+)>, domain=(?P<domain>\S+), "
    r"user=(?P<user>\S+), size=(?P<size>\d+), delay=\d+\.\d{3}, "
    r"dsn=(?P<dsn>\S+), status=(?P<status>\w+) \((?P<text>[^)]*)\)"
)

T = TypeVar("T")


def lhlo_reply(size: int = 50 * 1024 * 1024) -> str:
    """The whole LHLO reply of the server, for a given lmtp.max_message_size."""
    keywords = [
        HOSTNAME,
        "PIPELINING",
        "ENHANCEDSTATUSCODES",
        "8BITMIME",
        f"SIZE {size}",
        "SMTPUTF8",
        "CHUNKING",
        "BINARYMIME",
    ]
    lines = [f"250-{keyword}" for keyword in keywords]
    return "\n".join([*lines, "250 XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT"])


def rcpt_ok(address: str) -> str:
    """The 250 reply to an accepted RCPT."""
    return f"250 2.1.5 <{address}> Recipient OK"


def saved(address: str) -> str:
    """The 250 reply after the final dot for one delivered recipient."""
    return f"250 2.0.0 <{address}> Saved"


def envelope(mail_from: str, *rcpt_tos: str, params: str = "") -> bytes:
    """MAIL and RCPT commands, ready to be pipelined."""
    mail = f"MAIL FROM:<{mail_from}>{' ' + params if params else ''}\r\n"
    rcpts = "".join(f"RCPT TO:<{address}>\r\n" for address in rcpt_tos)
    return (mail + rcpts).encode()


def dot_stuffed(body: bytes) -> bytes:
    """A CRLF body with DATA transparency and the end marker (RFC 5321 4.5.2)."""
    lines = body.split(b"\r\n")
    stuffed = [b"." + line if line.startswith(b".") else line for line in lines]
    return b"\r\n".join(stuffed) + b".\r\n"


def wait_until(
    check: Callable[[], T | None], what: str, timeout: float = DEADLINE
) -> T:
    """Poll check() until it returns something true; fail after timeout."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"still waiting for {what}")
        time.sleep(0.02)
    return result


def refused(port: int) -> bool:
    """True if nothing accepts connections on the TCP port any more."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


class Wire:
    """One raw connection to the server; every read is bounded by a deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending = b""

    @classmethod
    def tcp(cls, server: LmtpProcess) -> "Wire":
        """Connect to the server's TCP listener."""
        return cls(socket.create_connection(("127.0.0.1", server.port), DEADLINE))

    @classmethod
    def unix(cls, path: Path) -> "Wire":
        """Connect to a unix socket."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(DEADLINE)
        sock.connect(str(path))
        return cls(sock)

    @classmethod
    def greeted(cls, server: LmtpProcess, lhlo: bool = True) -> "Wire":
        """Connect over TCP, check the greeting and (by default) send LHLO."""
        wire = cls.tcp(server)
        assert wire.reply() == GREETING
        if lhlo:
            wire.send(b"LHLO client.example\r\n")
            assert wire.reply() == lhlo_reply()
        return wire

    def send(self, data: bytes) -> None:
        """Write bytes as they are, in one call."""
        self.sock.sendall(data)

    def reply(self, timeout: float = DEADLINE) -> str:
        """The next whole reply: its lines without CRLF, joined by LF."""
        deadline = time.monotonic() + timeout
        lines = [self._line(deadline)]
        while lines[-1][3:4] == "-":
            lines.append(self._line(deadline))
        return "\n".join(lines)

    def replies(self, count: int) -> list[str]:
        """The next count whole replies."""
        return [self.reply() for _ in range(count)]

    def nothing_more(self) -> bool:
        """True if no reply is queued before the one to a NOOP sent now."""
        self.send(b"NOOP\r\n")
        return self.reply() == OK

    def closed(self, timeout: float = DEADLINE) -> bool:
        """Wait until the server closes; True if it sent nothing unread before."""
        deadline = time.monotonic() + timeout
        try:
            while self._receive(deadline):
                pass
        except ConnectionResetError:
            pass
        return not self.pending

    def close(self) -> None:
        """Close our end."""
        self.sock.close()

    def __enter__(self) -> "Wire":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _line(self, deadline: float) -> str:
        while b"\r\n" not in self.pending:
            if not self._receive(deadline):
                raise EOFError(f"connection closed; unread: {self.pending!r}")
        line, _, self.pending = self.pending.partition(b"\r\n")
        return line.decode()

    def _receive(self, deadline: float) -> bool:
        """Read once into pending; False at end of file."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no reply in time; unread: {self.pending!r}")
        self.sock.settimeout(remaining)
        data = self.sock.recv(65536)
        self.pending += data
        return bool(data)


def host(server: LmtpProcess, *addresses: str, **options: int) -> None:
    """Create the accounts, then start the server."""
    for address in addresses:
        server.add_account(address, **options)
    server.start()


def stored_files(*folders: Path) -> list[Path]:
    """Every file in the given folders (missing folders hold none)."""
    return [path for folder in folders if folder.is_dir() for path in folder.iterdir()]


def maildir_files(server: LmtpProcess, address: str) -> list[Path]:
    """Every file in new/ and tmp/ of an account's Maildir."""
    maildir = server.maildir(address)
    return stored_files(maildir / "new", maildir / "tmp")


def deliveries(server: LmtpProcess) -> list[dict[str, str]]:
    """The fields of every delivery line (after DATA) in the server log."""
    found = (DELIVERY_LINE.fullmatch(line) for line in server.log_text().splitlines())
    return [match.groupdict() for match in found if match]


def send_message(
    wire: Wire,
    rcpt_tos: list[str],
    body: bytes = BODY,
    refused: Mapping[str, str] | None = None,
    mail_from: str = SENDER,
) -> list[str]:
    """Run one pipelined transaction; return the replies after the final dot.

    `refused` maps the recipients RCPT refuses to the reply they get.
    """
    refused = refused or {}
    rcpt_replies = [refused.get(rcpt) or rcpt_ok(rcpt) for rcpt in rcpt_tos]
    wire.send(envelope(mail_from, *rcpt_tos) + b"DATA\r\n")
    assert wire.replies(len(rcpt_tos) + 2) == [MAIL_OK, *rcpt_replies, GO_AHEAD]
    wire.send(dot_stuffed(body))
    return wire.replies(len(rcpt_tos) - len(refused))
