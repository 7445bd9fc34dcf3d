"""Raw-socket POP3 clients for the benchmark: logins, listings, pipelined RETR.

No poplib: it parses every line in Python and would measure itself. These
clients read in large chunks and count terminators with bytes.count.
"""

import contextlib
import socket
import statistics
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from peers import HOST

TIMEOUT = 30.0
READ_SIZE = 1 << 20
# RFC 1939 section 3: a multi-line response ends with "." alone on a line;
# dot-stuffing keeps the sequence out of the content.
TERMINATOR = b"\r\n.\r\n"


class Pop3Error(Exception):
    """The server answered -ERR, closed early, or was too slow."""


class Wire:
    """One POP3 connection, greeted."""

    def __init__(self, port: int) -> None:
        """Connect to HOST:port and read the greeting."""
        self.sock = socket.create_connection((HOST, port), TIMEOUT)
        self.buffer = b""
        self.status()

    def _fill(self) -> None:
        data = self.sock.recv(READ_SIZE)
        if not data:
            raise Pop3Error("connection closed by the server")
        self.buffer += data

    def status(self) -> bytes:
        """The next status line; Pop3Error unless it is +OK."""
        while b"\r\n" not in self.buffer:
            self._fill()
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        if not line.startswith(b"+OK"):
            raise Pop3Error(line.decode("ascii", "replace"))
        return line

    def command(self, text: str) -> bytes:
        """Send one command and read its status line."""
        self.sock.sendall(text.encode() + b"\r\n")
        return self.status()

    def body(self) -> bytes:
        """The rest of a multi-line response, terminator included."""
        data = b"\r\n" + self.buffer
        while (end := data.find(TERMINATOR)) == -1:
            self._fill()
            data = b"\r\n" + self.buffer
        body, self.buffer = data[2 : end + 5], data[end + 5 :]
        return body

    def login(self, user: str, password: str) -> int:
        """USER, PASS, then STAT; the number of messages."""
        self.command(f"USER {user}")
        self.command(f"PASS {password}")
        return int(self.command("STAT").split()[1])

    def quit(self) -> None:
        """QUIT, read the sign-off, close."""
        try:
            self.command("QUIT")
        finally:
            self.sock.close()


# Logins per second: worker processes (no GIL between them), each a loop of
# whole sessions on an account of its own.


def login_loop(
    port: int, user: str, password: str, seconds: float, limit: int
) -> tuple[int, int, float]:
    """Connect, USER, PASS, QUIT until time or count runs out: (ok, failed, s)."""
    started = time.monotonic()
    deadline = started + seconds
    done = failed = 0
    while done + failed < limit and time.monotonic() < deadline:
        try:
            wire = Wire(port)
            wire.command(f"USER {user}")
            wire.command(f"PASS {password}")
            wire.quit()
            done += 1
        except (OSError, Pop3Error):
            failed += 1
    return done, failed, time.monotonic() - started


@dataclass(frozen=True)
class LoginFigure:
    """Logins of all workers together."""

    logins: int
    failed: int
    seconds: float

    @property
    def rate(self) -> float:
        """Successful logins per second."""
        return self.logins / self.seconds


def measure_logins(
    pool: ProcessPoolExecutor,
    port: int,
    users: list[str],
    password: str,
    seconds: float,
    limit: int,
) -> LoginFigure:
    """One worker per user, all at once, each for `seconds` or `limit` logins."""
    futures = [
        pool.submit(login_loop, port, user, password, seconds, limit) for user in users
    ]
    results = [future.result(timeout=seconds + 4 * TIMEOUT) for future in futures]
    return LoginFigure(
        sum(result[0] for result in results),
        sum(result[1] for result in results),
        max(result[2] for result in results),
    )


def warm_pool(pool: ProcessPoolExecutor, workers: int) -> None:
    """Start every worker process before anything is timed."""
    list(pool.map(time.sleep, [0.05] * workers))


# UIDL and LIST on a large maildrop.


@dataclass(frozen=True)
class ListingFigure:
    """Seconds to log in (the server lists the maildrop) and per UIDL+LIST pair."""

    login: float
    pair: float


def measure_listing(
    port: int, user: str, password: str, messages: int, repeats: int
) -> ListingFigure:
    """Log in, then time UIDL followed by LIST, `repeats` times; the median."""
    started = time.monotonic()
    wire = Wire(port)
    found = wire.login(user, password)
    login = time.monotonic() - started
    _expect(found, messages, "messages at login")
    pairs = []
    for _ in range(repeats):
        started = time.monotonic()
        for verb in ("UIDL", "LIST"):
            wire.command(verb)
            _expect(wire.body().count(b"\r\n") - 1, messages, f"{verb} lines")
        pairs.append(time.monotonic() - started)
    wire.quit()
    return ListingFigure(login, statistics.median(pairs))


def _expect(found: int, wanted: int, what: str) -> None:
    if found != wanted:
        raise Pop3Error(f"{what}: {found}, expected {wanted}")


# RETR of every message, pipelined.


@dataclass(frozen=True)
class TransferFigure:
    """Octets on the wire for all RETR responses, and the time they took."""

    octets: int
    seconds: float

    @property
    def mb_per_second(self) -> float:
        """Megabytes (10^6 octets) per second."""
        return self.octets / self.seconds / 1e6


def measure_retrieval(
    port: int, user: str, password: str, messages: int
) -> TransferFigure:
    """Send RETR 1..N back to back from a thread; read until N terminators."""
    wire = Wire(port)
    _expect(wire.login(user, password), messages, "messages at login")
    commands = b"".join(b"RETR %d\r\n" % number for number in range(1, messages + 1))
    sender = threading.Thread(target=wire.sock.sendall, args=(commands,))
    started = time.monotonic()
    sender.start()
    octets = _read_responses(wire, messages)
    seconds = time.monotonic() - started
    sender.join()
    wire.quit()
    return TransferFigure(octets, seconds)


def _read_responses(wire: Wire, count: int) -> int:
    """Read until `count` multi-line responses have ended; octets read."""
    seen, octets, tail = 0, 0, b"\r\n"
    while seen < count:
        data = wire.sock.recv(READ_SIZE)
        if not data:
            raise Pop3Error(f"closed after {seen} of {count} responses")
        octets += len(data)
        # The tail (4 octets) holds no whole terminator, so none counts twice.
        window = tail + data
        seen += window.count(TERMINATOR)
        tail = window[-4:]
    if seen > count:
        raise Pop3Error(f"{seen} responses for {count} commands")
    return octets


# Idle sessions, for memory.


def open_sessions(port: int, users: list[str], password: str) -> list[Wire]:
    """One logged-in session per user, left idle; all closed on failure."""
    wires: list[Wire] = []
    try:
        for user in users:
            wire = Wire(port)
            wires.append(wire)
            wire.login(user, password)
    except BaseException:
        close_sessions(wires)
        raise
    return wires


def close_sessions(wires: list[Wire]) -> None:
    """QUIT every session (closing it even if QUIT fails)."""
    for wire in wires:
        with contextlib.suppress(OSError, Pop3Error):
            wire.quit()
