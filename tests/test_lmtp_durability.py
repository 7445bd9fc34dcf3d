"""Durability and safety of a real lmtpd: crashes, a full disk, address tricks, retries.

Each test drives `mdmail serve lmtp` through a raw socket, so that every reply
line, and every reply that never came, is seen as an MTA would see it.
"""

import email
import errno
import os
import random
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import policy
from pathlib import Path

import pytest

from tests.lmtp_process import LmtpProcess

SENDER = "sender@outside.example"
IO_TIMEOUT = 10.0
CRASH_KILLS = 50
CRASH_BUDGET = 100.0  # seconds for the kill loop; the whole test stays under 2 min
SAVED = "250 2.0.0 <{}> Saved"
RCPT_OK = "250 2.1.5 <{}> Recipient OK"
NO_SPACE = "452 4.3.1 <{}> Insufficient system storage, try again later"
MAIL_OK = "250 2.1.0 Sender OK"
GO_AHEAD = "354 Start mail input; end with <CRLF>.<CRLF>"

Reply = str
OnReply = Callable[[str, Reply], None]


class LmtpClient:
    """A small LMTP client on a raw TCP socket; replies come back as text."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        self.reader = self.sock.makefile("rb")
        assert self.reply() == "220 lmtp.test.example LMTP server ready"
        assert self.command(b"LHLO client.test.example").startswith("250-")

    def __enter__(self) -> "LmtpClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the connection without QUIT, as a crashed client would."""
        self.reader.close()
        self.sock.close()

    def reply(self) -> Reply:
        """Read one reply, all its lines; a connection lost mid-way raises."""
        lines = []
        while True:
            line = self.reader.readline(4096)
            if not line.endswith(b"\r\n"):
                raise ConnectionAbortedError("connection closed before a reply")
            lines.append(line[:-2].decode("utf-8"))
            if line[3:4] != b"-":
                return "\n".join(lines)

    def command(self, line: bytes) -> Reply:
        """Send one command line and return its reply."""
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def send(
        self,
        rcpt_tos: list[bytes],
        data: bytes,
        ident: str | None = None,
        smtputf8: bool = False,
        on_reply: OnReply | None = None,
    ) -> dict[str, Reply]:
        """Run one transaction; return the final reply of each recipient."""
        if ident is not None:
            assert self.command(f"XFORWARD IDENT={ident}".encode()) == "250 2.0.0 OK"
        mail = f"MAIL FROM:<{SENDER}>{' SMTPUTF8' if smtputf8 else ''}"
        assert self.command(mail.encode()) == MAIL_OK
        outcome: dict[str, Reply] = {}
        accepted = []
        for rcpt in rcpt_tos:
            reply = self.command(b"RCPT TO:<" + rcpt + b">")
            if reply.startswith("250 "):
                accepted.append(rcpt)
            else:
                _note(outcome, rcpt, reply, on_reply)
        if not accepted:
            assert self.command(b"RSET") == "250 2.0.0 OK"
            return outcome
        assert self.command(b"DATA") == GO_AHEAD
        self.sock.sendall(dot_stuffed(data) + b".\r\n")
        for rcpt in accepted:
            _note(outcome, rcpt, self.reply(), on_reply)
        return outcome


def _note(
    outcome: dict[str, Reply], rcpt: bytes, reply: Reply, on_reply: OnReply | None
) -> None:
    address = rcpt.decode("utf-8", "backslashreplace")
    outcome[address] = reply
    if on_reply is not None:
        on_reply(address, reply)


def dot_stuffed(data: bytes) -> bytes:
    """RFC 5321 section 4.5.2: a line starting with "." gets one more."""
    lines = data.split(b"\r\n")
    return b"\r\n".join(b"." + line if line[:1] == b"." else line for line in lines)


def message(number: int, rcpt_tos: list[str], size: int = 0) -> bytes:
    """A unique message: Message-ID, a begin and an end marker, filler to size."""
    head = [
        f"From: <{SENDER}>",
        f"To: {', '.join(rcpt_tos)}",
        f"Subject: message {number}",
        f"Message-ID: <{number}.durability@test.example>",
        "",
        f"BEGIN-{number}",
        ".a line that travels dot-stuffed",
    ]
    filler = [f"{number:06d}-{row:06d} " + "x" * 64 for row in range(size // 80)]
    return "\r\n".join([*head, *filler, f"END-{number}", ""]).encode()


def stored_parts(content: bytes) -> tuple[list[bytes], bytes]:
    """Split a stored file into the lines the server prepended and the message."""
    prepended = []
    while content.startswith((b"Return-Path: ", b"Delivered-To: ")):
        line, _, content = content.partition(b"\n")
        prepended.append(line)
    return prepended, content


def check_stored(path: Path, address: str, data: bytes) -> None:
    """The file is the message as sent (CRLF as LF), after our own header lines."""
    prepended, stored = stored_parts(path.read_bytes())
    assert prepended[0] == f"Return-Path: <{SENDER}>".encode()
    assert set(prepended[1:]) <= {f"Delivered-To: {address}".encode()}
    assert stored == data.replace(b"\r\n", b"\n"), path


def message_number(path: Path) -> int:
    """Parse a stored file and return its number; its markers must be whole."""
    parsed = email.message_from_bytes(
        stored_parts(path.read_bytes())[1], policy=policy.default
    )
    number = int(str(parsed["Message-ID"]).strip("<>").split(".")[0])
    body = parsed.get_payload()
    assert isinstance(body, str)
    assert body.startswith(f"BEGIN-{number}\n")
    assert body.endswith(f"\nEND-{number}\n")
    return number


def files_under(top: Path) -> set[Path]:
    """Every file and folder below top (symlinks are not followed)."""
    found: set[Path] = set()
    for folder, dirs, files in os.walk(top):
        found.update(Path(folder) / name for name in [*dirs, *files])
    return found


def tmp_files(server: LmtpProcess, addresses: list[str]) -> set[Path]:
    """The files in the state root's staging tmp/ and in each Maildir's tmp/."""
    folders = [server.root.staging, *(server.maildir(a) / "tmp" for a in addresses)]
    return {path for folder in folders if folder.is_dir() for path in folder.iterdir()}


# 1. SIGKILL at random moments while a client delivers.

CRASH_ADDRESSES = ["foo@abc.example", "bar@abc.example", "foo@xyz.example"]
CRASH_RECIPIENTS = [
    ["foo@abc.example"],
    ["foo@xyz.example"],
    ["foo@abc.example", "foo@xyz.example"],
    ["bar@abc.example", "foo@xyz.example"],
    ["foo@abc.example", "bar@abc.example"],
]


@dataclass(frozen=True)
class Outgoing:
    """One numbered message of the crash test."""

    number: int
    rcpt_tos: tuple[str, ...]
    data: bytes

    @property
    def ident(self) -> str:
        """The MTA queue id sent with XFORWARD: a retry carries the same one."""
        return f"Q{self.number:05d}CRASH"


@dataclass
class Ledger:
    """What the client sent and which recipients got their 250 (thread-safe)."""

    sent: dict[int, Outgoing] = field(default_factory=dict)
    pending: dict[int, list[str]] = field(default_factory=dict)
    acked: Counter[tuple[str, int]] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def new_message(self, rng: random.Random) -> Outgoing:
        """Make the next message: some small, some large enough to kill mid-body."""
        number = len(self.sent) + 1
        rcpt_tos = rng.choice(CRASH_RECIPIENTS)
        size = rng.choice([200, 2000, 20_000, 300_000])
        outgoing = Outgoing(number, tuple(rcpt_tos), message(number, rcpt_tos, size))
        with self.lock:
            self.sent[number] = outgoing
            self.pending[number] = list(rcpt_tos)
        return outgoing

    def record(self, number: int, address: str, reply: Reply) -> None:
        """Take one recipient's final reply."""
        with self.lock:
            if reply != SAVED.format(address):
                self.unexpected.append(reply)
                return
            self.acked[address, number] += 1
            self.pending[number].remove(address)

    def deliver(self, client: LmtpClient, outgoing: Outgoing) -> None:
        """Send a message to those of its recipients still without a 250."""
        with self.lock:
            rcpt_tos = [address.encode() for address in self.pending[outgoing.number]]
        if rcpt_tos:
            client.send(
                rcpt_tos,
                outgoing.data,
                ident=outgoing.ident,
                on_reply=lambda address, reply: self.record(
                    outgoing.number, address, reply
                ),
            )

    def unacknowledged(self) -> list[Outgoing]:
        """Messages that some recipient has no 250 for."""
        with self.lock:
            return [self.sent[n] for n, rcpts in self.pending.items() if rcpts]


@dataclass
class CrashClient:
    """The client thread: delivers new messages, retries some after a crash."""

    port: int
    ledger: Ledger
    rng: random.Random
    up: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    failure: BaseException | None = None
    retry: Outgoing | None = None
    lost: int = 0

    def run(self, deadline: float) -> None:
        """Deliver until stopped; keep any exception for the test to raise."""
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                if self.up.wait(0.5):
                    self._session()
        except BaseException as exc:
            self.failure = exc

    def _session(self) -> None:
        try:
            with LmtpClient(self.port) as client:
                while not self.stop.is_set():
                    outgoing = self.retry or self.ledger.new_message(self.rng)
                    self.retry = outgoing
                    self.ledger.deliver(client, outgoing)
                    self.retry = None
        except TimeoutError:
            raise
        except OSError:
            # Killed: like an MTA, retry now, or leave it to the end.
            self.lost += 1
            if self.rng.random() < 0.5:
                self.retry = None


def stored_pending(server: LmtpProcess, ledger: Ledger) -> int:
    """How many recipient copies without a 250 are in new/ all the same."""
    pending = {(a, o.number) for o in ledger.unacknowledged() for a in o.rcpt_tos}
    pending -= set(ledger.acked)
    return sum(
        (address, message_number(path)) in pending
        for address in CRASH_ADDRESSES
        for path in server.messages(address)
    )


def stored_numbers(
    server: LmtpProcess, address: str, sent: dict[int, Outgoing]
) -> Counter[int]:
    """Check every file in new/ and count them by message number; cur/ is empty."""
    found: Counter[int] = Counter()
    for path in server.messages(address):
        number = message_number(path)
        check_stored(path, address, sent[number].data)
        found[number] += 1
    assert list((server.maildir(address) / "cur").iterdir()) == []
    return found


@pytest.mark.slow
def test_sigkill_loses_nothing_acknowledged(lmtp_server: LmtpProcess) -> None:
    """SIGKILL the server at random moments; every 250 stays, exactly once, whole."""
    started = time.monotonic()
    seed = int(os.environ.get("LMTP_CRASH_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    for address in CRASH_ADDRESSES:
        lmtp_server.add_account(address)
    ledger = Ledger()
    crash_client = CrashClient(lmtp_server.port, ledger, random.Random(seed + 1))
    thread = threading.Thread(
        target=crash_client.run, args=(started + CRASH_BUDGET + 30,), daemon=True
    )
    lmtp_server.start()
    crash_client.up.set()
    thread.start()

    kills = 0
    while kills < CRASH_KILLS and time.monotonic() < started + CRASH_BUDGET:
        # Not a wait for the server: the random moment of the next crash.
        time.sleep(rng.uniform(0.02, 0.6))
        crash_client.up.clear()
        lmtp_server.kill()
        kills += 1
        lmtp_server.start()
        crash_client.up.set()
    crash_client.stop.set()
    thread.join(IO_TIMEOUT * 3)
    assert not thread.is_alive()
    if crash_client.failure is not None:
        raise crash_client.failure

    # The final crash; what killed runs left in tmp/ may stay there.
    lmtp_server.kill()
    kills += 1
    leftovers = tmp_files(lmtp_server, CRASH_ADDRESSES)
    acknowledged = sum(ledger.acked.values())
    unacknowledged = ledger.unacknowledged()
    stored_unacknowledged = stored_pending(lmtp_server, ledger)
    lmtp_server.start()
    with LmtpClient(lmtp_server.port) as client:
        for outgoing in unacknowledged:
            ledger.deliver(client, outgoing)
    assert ledger.unexpected == []
    assert ledger.unacknowledged() == []
    assert lmtp_server.stop() == 0
    assert tmp_files(lmtp_server, CRASH_ADDRESSES) <= leftovers

    copies = {a: stored_numbers(lmtp_server, a, ledger.sent) for a in CRASH_ADDRESSES}
    duplicates = sum(n - 1 for found in copies.values() for n in found.values())
    print(
        f"\ncrash test seed={seed}: kills={kills}, "
        f"client connections lost={crash_client.lost}, "
        f"messages={len(ledger.sent)}, recipient copies acknowledged before the last "
        f"crash={acknowledged}, unacknowledged then={len(unacknowledged)} messages "
        f"({stored_unacknowledged} copies already stored), duplicates={duplicates}, "
        f"tmp leftovers={len(leftovers)}, time={time.monotonic() - started:.1f}s"
    )
    assert copies == {
        address: Counter(n for n, o in ledger.sent.items() if address in o.rcpt_tos)
        for address in CRASH_ADDRESSES
    }
    assert kills >= 10 and acknowledged > kills


def test_client_gone_mid_body_leaves_nothing(lmtp_server: LmtpProcess) -> None:
    """Clients hang up halfway through DATA and BDAT; after SIGTERM no file is left."""
    for address in CRASH_ADDRESSES:
        lmtp_server.add_account(address)
    lmtp_server.start()
    data = message(1, CRASH_ADDRESSES, 300_000)
    for rcpt_tos in CRASH_RECIPIENTS:
        for command in (b"DATA", f"BDAT {len(data)} LAST".encode()):
            with LmtpClient(lmtp_server.port) as client:
                assert client.command(f"MAIL FROM:<{SENDER}>".encode()) == MAIL_OK
                for address in rcpt_tos:
                    rcpt = f"RCPT TO:<{address}>".encode()
                    assert client.command(rcpt) == RCPT_OK.format(address)
                if command == b"DATA":
                    assert client.command(command) == GO_AHEAD
                    client.sock.sendall(data[: len(data) // 2])
                else:
                    client.sock.sendall(command + b"\r\n" + data[: len(data) // 2])

    assert lmtp_server.stop() == 0
    assert tmp_files(lmtp_server, CRASH_ADDRESSES) == set()
    for address in CRASH_ADDRESSES:
        assert lmtp_server.messages(address) == []


# 2. A full disk under one domain's Maildir.

SMALL = "foo@small.example"
OTHER = "foo@abc.example"


@pytest.fixture
def small_maildir(lmtp_server: LmtpProcess) -> Iterator[Path]:
    """foo@small.example's Maildir on a tmpfs of 1 MiB and 64 inodes (needs root)."""
    lmtp_server.add_account(SMALL)
    lmtp_server.add_account(OTHER)
    maildir = lmtp_server.maildir(SMALL)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    mounted = subprocess.run(
        [
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "size=1m,nr_inodes=64,mode=0700",
            "tmpfs",
            str(maildir),
        ],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        for name in ("tmp", "new", "cur"):
            (maildir / name).mkdir(mode=0o700)
        yield maildir
    finally:
        # The server goes first: its files on the tmpfs would keep it busy.
        if lmtp_server.process is not None:
            lmtp_server.stop()
        subprocess.run(["umount", str(maildir)], check=True)


def fill(folder: Path) -> Path:
    """Write a file in folder until the filesystem is full; return it."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for _ in range(1024):  # 4 MiB at most: four times the tmpfs
            os.write(fd, b"f" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_disk_full_defers_that_mailbox_only(
    lmtp_server: LmtpProcess, small_maildir: Path
) -> None:
    """A message too big for one domain's disk: 452 there, 250 elsewhere, no debris."""
    lmtp_server.start()
    big = message(1, [SMALL, OTHER], 1_500_000)
    with LmtpClient(lmtp_server.port) as client:
        both = client.send([SMALL.encode(), OTHER.encode()], big)
        alone = client.send([SMALL.encode()], message(2, [SMALL], 1_500_000))

    assert both == {SMALL: NO_SPACE.format(SMALL), OTHER: SAVED.format(OTHER)}
    assert alone == {SMALL: NO_SPACE.format(SMALL)}
    (stored,) = lmtp_server.messages(OTHER)
    check_stored(stored, OTHER, big)
    assert files_under(small_maildir) == {
        small_maildir / n for n in ("tmp", "new", "cur")
    }
    assert tmp_files(lmtp_server, [SMALL, OTHER]) == set()
    assert lmtp_server.stop() == 0


def test_disk_full_then_freed_without_restart(
    lmtp_server: LmtpProcess, small_maildir: Path
) -> None:
    """A full disk defers even a small message; once space is freed, it is saved."""
    lmtp_server.start()
    filler = fill(small_maildir)
    small = message(1, [SMALL], 300)
    with LmtpClient(lmtp_server.port) as client:
        full = client.send([SMALL.encode()], small)
        shared = client.send([SMALL.encode(), OTHER.encode()], message(2, [], 300))
        assert files_under(small_maildir) == {
            small_maildir / n for n in ("tmp", "new", "cur", "filler")
        }
        filler.unlink()
        freed = client.send([SMALL.encode()], small)

    assert full == {SMALL: NO_SPACE.format(SMALL)}
    assert shared == {SMALL: NO_SPACE.format(SMALL), OTHER: SAVED.format(OTHER)}
    assert freed == {SMALL: SAVED.format(SMALL)}
    (stored,) = lmtp_server.messages(SMALL)
    check_stored(stored, SMALL, small)
    assert tmp_files(lmtp_server, [SMALL, OTHER]) == set()
    assert lmtp_server.stop() == 0


def test_no_inode_left_defers_at_data(
    lmtp_server: LmtpProcess, small_maildir: Path
) -> None:
    """No inode left for the staging file: DATA gets 452; one freed, it is saved."""
    lmtp_server.start()
    fillers = []
    with pytest.raises(OSError) as full:
        for number in range(100):  # the tmpfs holds 64 inodes
            fillers.append(small_maildir / f"filler{number}")
            fillers[-1].touch()
    assert full.value.errno == errno.ENOSPC
    data = message(1, [SMALL])
    with LmtpClient(lmtp_server.port) as client:
        assert client.command(f"MAIL FROM:<{SENDER}>".encode()) == MAIL_OK
        assert client.command(f"RCPT TO:<{SMALL}>".encode()) == RCPT_OK.format(SMALL)
        assert client.command(b"DATA") == (
            "452 4.3.1 Insufficient system storage, try again later"
        )
        assert client.command(b"RSET") == "250 2.0.0 OK"
        # tmpfs counts a hard link as an inode too: staging file and link.
        for filler in fillers[:2]:
            filler.unlink()
        freed = client.send([SMALL.encode()], data)

    assert freed == {SMALL: SAVED.format(SMALL)}
    (stored,) = lmtp_server.messages(SMALL)
    check_stored(stored, SMALL, data)
    assert tmp_files(lmtp_server, [SMALL]) == set()
    assert lmtp_server.stop() == 0


# 3. Address tricks never reach another domain or a path outside the spool.

BAD = "501 5.1.3 <{}> Bad recipient address syntax"
UNKNOWN = "550 5.1.1 <{}> User unknown"
NOT_HOSTED = "550 5.1.2 <{}> Domain not hosted here"
NON_ASCII = "553 5.6.7 <{}> Non-ASCII address requires SMTPUTF8"
TRICK_ACCOUNTS = [
    "foo@abc.example",
    "foo@xyz.example",
    "jörg@abc.example",
    "foo@bücher.example",
    "all@catch.example",  # the target of catch.example's catch-all alias
]
# (RCPT octets, SMTPUTF8 given, the whole reply, the account it must reach or None)
ADDRESS_TRICKS: list[tuple[bytes, bool, str, str | None]] = [
    (b"foo@xyz.example", False, SAVED, "foo@xyz.example"),
    (b"../foo@abc.example", False, BAD, None),
    (b"foo/../../xyz.example/mail/foo@abc.example", False, BAD, None),
    (b"foo@abc.example/../xyz.example", False, BAD, None),
    (b"foo@../xyz.example", False, BAD, None),
    (b'"../foo"@abc.example', False, BAD, None),
    (b'"..\\/foo"@abc.example', False, BAD, None),
    (b'".."@abc.example', False, BAD, None),
    (b'"foo/bar"@catch.example', False, BAD, None),
    (b"foo%xyz.example@abc.example", False, UNKNOWN, None),
    (b"foo%xyz.example@catch.example", False, SAVED, "all@catch.example"),
    (b'"foo@xyz.example"@abc.example', False, BAD, None),
    (b'"foo@xyz.example"@catch.example', False, BAD, None),
    (b"foo@abc.example@xyz.example", False, BAD, None),
    (b"foo@xyz.example@catch.example", False, BAD, None),
    (b"foo(x)@abc.example", False, BAD, None),
    (b"(xyz.example)foo@catch.example", False, BAD, None),
    (b"foo@abc.example(xyz.example)", False, BAD, None),
    # RFC 5321 section 4.1.2 and appendix C: the route is accepted and ignored.
    (b"@evil.example:foo@abc.example", False, SAVED, "foo@abc.example"),
    (b"@evil.example,@xyz.example:foo@abc.example", False, SAVED, "foo@abc.example"),
    (b"@abc.example:foo@xyz.example", False, SAVED, "foo@xyz.example"),
    (b"foo\\@abc.example", False, BAD, None),
    (b"foo\\bar@catch.example", False, BAD, None),
    (b"..\\foo@abc.example", False, BAD, None),
    # RFC 5321 section 4.1.2: a quoted pair stands for the character itself.
    (b'"f\\oo"@abc.example', False, SAVED, "foo@abc.example"),
    (b"foo\0@abc.example", False, "500 5.5.2 Invalid characters in command", None),
    (
        b"foo@abc.example\0.xyz.example",
        False,
        "500 5.5.2 Invalid characters in command",
        None,
    ),
    (b"a" * 64 + b"@abc.example", False, UNKNOWN, None),
    (b"a" * 65 + b"@catch.example", False, BAD, None),
    (b"a" * 3000 + b"@abc.example", False, "500 5.5.6 Line too long", None),
    ("jörg@abc.example".encode(), False, NON_ASCII, None),
    ("foo@bücher.example".encode(), False, NON_ASCII, None),
    ("foo@abc\u3002example".encode(), False, NON_ASCII, None),
    ("jörg@abc.example".encode(), True, SAVED, "jörg@abc.example"),
    ("foo@bücher.example".encode(), True, SAVED, "foo@bücher.example"),
    (b"foo@xn--bcher-kva.example", False, SAVED, "foo@bücher.example"),
    # UTS 46 maps the ideographic full stop to a dot: still abc.example.
    ("foo@abc\u3002example".encode(), True, SAVED, "foo@abc.example"),
    ("\uff46\uff4f\uff4f@abc.example".encode(), True, UNKNOWN, None),
    (b"foo@ABC.EXAMPLE", False, SAVED, "foo@abc.example"),
    (b"FOO@abc.example", False, SAVED, "foo@abc.example"),
    (b"foo@abc.example.", False, SAVED, "foo@abc.example"),
    (b"foo@abc.example..", False, BAD, None),
    (b"foo@[127.0.0.1]", False, BAD, None),
    (b"foo@abc.example.xyz.example", False, NOT_HOSTED, None),
    (b"foo @abc.example", False, "501 5.1.3 Bad recipient address syntax", None),
]


@pytest.fixture(scope="module")
def trick_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LmtpProcess]:
    """One server for all address tricks; every domain has had one delivery."""
    server = LmtpProcess(tmp_path_factory.mktemp("tricks") / "lmtpd")
    for address in TRICK_ACCOUNTS:
        server.add_account(address)
    server.admin.add_alias("catch.example", "@", ["all"])
    server.start()
    try:
        # The first delivery creates each domain's log: not a file a trick made.
        with LmtpClient(server.port) as client:
            rcpt_tos = [address.encode() for address in TRICK_ACCOUNTS]
            client.send(rcpt_tos, message(0, TRICK_ACCOUNTS), smtputf8=True)
        yield server
    finally:
        assert server.stop() == 0


def _trick_id(case: tuple[bytes, bool, str, str | None]) -> str:
    rcpt, smtputf8, _, _ = case
    text = rcpt.decode("utf-8", "backslashreplace")
    return (text if len(text) < 50 else f"{text[:20]}...{len(text)}") + (
        " SMTPUTF8" if smtputf8 else ""
    )


@pytest.mark.parametrize("case", ADDRESS_TRICKS, ids=_trick_id)
def test_address_trick_reaches_only_its_mailbox(
    trick_server: LmtpProcess, case: tuple[bytes, bool, str, str | None]
) -> None:
    """An odd RCPT gets its reply; at most one file appears, in the right new/."""
    rcpt, smtputf8, reply, account = case
    top = trick_server.folder.parent
    before = files_under(top)
    data = message(ADDRESS_TRICKS.index(case) + 1, ["undisclosed"])
    with LmtpClient(trick_server.port) as client:
        outcome = client.send([rcpt], data, smtputf8=smtputf8)

    address = rcpt.decode("utf-8", "backslashreplace")
    assert outcome == {address: reply.format(address)}
    after = files_under(top)
    assert before - after == set()
    if account is None:
        assert after - before == set()
        return
    (created,) = after - before
    assert created.parent == trick_server.maildir(account) / "new"
    assert stored_parts(created.read_bytes())[1] == data.replace(b"\r\n", b"\n")


# 4. An MTA's retry with the same queue id, across a crash, adds no second copy.

ABC = "foo@abc.example"
XYZ = "foo@xyz.example"


def test_retry_after_sigkill_is_a_duplicate(lmtp_server: LmtpProcess) -> None:
    """250 for Q1 and Q2, then SIGKILL; the same retries after restart add nothing."""
    lmtp_server.add_account(ABC)
    lmtp_server.add_account(XYZ)
    lmtp_server.start()
    single, both = message(1, [ABC]), message(2, [ABC, XYZ])
    with LmtpClient(lmtp_server.port) as client:
        assert client.send([ABC.encode()], single, ident="Q1") == {
            ABC: SAVED.format(ABC)
        }
        assert client.send([ABC.encode(), XYZ.encode()], both, ident="Q2") == {
            ABC: SAVED.format(ABC),
            XYZ: SAVED.format(XYZ),
        }
    lmtp_server.kill()
    lmtp_server.start()

    with LmtpClient(lmtp_server.port) as client:
        retried = client.send([ABC.encode()], single, ident="Q1")
        retried |= client.send([XYZ.encode(), ABC.encode()], both, ident="Q2")
        # The same queue id for a recipient that has not had it yet is new.
        other = client.send([XYZ.encode()], single, ident="Q1")

    assert retried == {ABC: SAVED.format(ABC), XYZ: SAVED.format(XYZ)}
    assert other == {XYZ: SAVED.format(XYZ)}
    assert sorted(message_number(path) for path in lmtp_server.messages(ABC)) == [1, 2]
    assert sorted(message_number(path) for path in lmtp_server.messages(XYZ)) == [1, 2]
    assert lmtp_server.log_text().count("status=duplicate") == 3
    assert lmtp_server.stop() == 0


def test_retry_after_lost_reply_is_a_duplicate(lmtp_server: LmtpProcess) -> None:
    """The client hangs up after the final dot, retries, and again after a crash."""
    lmtp_server.add_account(ABC)
    lmtp_server.start()
    data = message(1, [ABC])
    with LmtpClient(lmtp_server.port) as client:
        assert client.command(b"XFORWARD IDENT=Q1") == "250 2.0.0 OK"
        assert client.command(f"MAIL FROM:<{SENDER}>".encode()) == MAIL_OK
        assert client.command(f"RCPT TO:<{ABC}>".encode()) == RCPT_OK.format(ABC)
        assert client.command(b"DATA") == GO_AHEAD
        client.sock.sendall(dot_stuffed(data) + b".\r\n")
    # The reply was never read: the MTA cannot know, and sends again.
    with LmtpClient(lmtp_server.port) as client:
        first = client.send([ABC.encode()], data, ident="Q1")
    lmtp_server.kill()
    lmtp_server.start()
    with LmtpClient(lmtp_server.port) as client:
        second = client.send([ABC.encode()], data, ident="Q1")

    assert first == second == {ABC: SAVED.format(ABC)}
    (stored,) = lmtp_server.messages(ABC)
    check_stored(stored, ABC, data)
    assert lmtp_server.log_text().count("status=duplicate") >= 1
    assert lmtp_server.stop() == 0
