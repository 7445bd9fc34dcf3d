"""One run of the whole-path benchmark: smtp-source into Postfix, then the Maildirs."""

import os
import re
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from harness import LogTail
from lmtp_load import (
    Cell,
    Client,
    LoadError,
    check_client,
    count_messages,
    stop_clients,
)
from peers import HOST, Mailbox, Peer, session_base, session_mailboxes

SMTP_SOURCE = "smtp-source"
SENDER = "sender@src.test"
POLL_SECONDS = 0.02
# After the last message lands, Postfix still has to log it and drop the queue file.
SETTLE_SECONDS = 30.0
STATUS = re.compile(rb" status=(\w+) ")
REUSED = re.compile(rb", conn_use=\d+, .* status=sent ")
# Postfix marks its own trouble this way; "warning" is counted, the rest voids a run.
TROUBLE = re.compile(rb"\]: (warning|error|fatal|panic): ")
NOT_PROBLEMS = ("sent", "reused", "warning")
# /proc/net/tcp states of a socket that carries no session: TIME_WAIT, LISTEN.
IDLE = ("06", "0A")


def routed(mailbox: Mailbox, peer: str) -> Mailbox:
    """The same mailbox in the domain Postfix routes to `peer` (ours.d1.test)."""
    return Mailbox(mailbox.local, f"{peer}.{mailbox.domain}")


def run_mailboxes(cell: Cell, peer: str) -> list[Mailbox]:
    """Every recipient of one run of the cell."""
    return [
        routed(mailbox, peer)
        for session in range(cell.sessions)
        for mailbox in session_mailboxes(session, cell.recipients)
    ]


def source_command(cell: Cell, session: int, peer: str, port: int) -> list[str]:
    """smtp-source for one session: SMTP, a new connection for every message."""
    return [
        SMTP_SOURCE,
        "-s",
        "1",
        "-m",
        str(cell.per_session),
        "-r",
        str(cell.recipients),
        "-l",
        str(cell.size),
        "-f",
        SENDER,
        "-M",
        "client.test",
        "-t",
        routed(session_base(session), peer).address,
        f"{HOST}:{port}",
    ]


class MaillogTally:
    """Postfix's delivery outcomes (status=sent, deferred, ...) as its log grows."""

    def __init__(self, maillog: Path) -> None:
        self.tail = LogTail(maillog)
        self.outcomes: Counter[str] = Counter()

    def read(self) -> Counter[str]:
        """Outcomes and trouble logged so far; "reused" is sent over a cached link."""
        whole = self.tail.read()
        self.outcomes.update(match[1].decode() for match in STATUS.finditer(whole))
        self.outcomes["reused"] += len(REUSED.findall(whole))
        self.outcomes.update(match[1].decode() for match in TROUBLE.finditer(whole))
        return Counter(self.outcomes)


class Landing:
    """Watches one run's Maildirs until each holds the messages sent to it."""

    def __init__(self, peer: Peer, mailboxes: list[Mailbox], each: int) -> None:
        self.name = peer.name
        self.folders = [peer.maildir(mailbox) for mailbox in mailboxes]
        self.each = each
        self.pending = list(self.folders)

    def done(self) -> bool:
        """Recount the Maildirs not yet full; LoadError if one holds too many."""
        self.pending = [folder for folder in self.pending if self._short(folder)]
        return not self.pending

    def _short(self, folder: Path) -> bool:
        found = count_messages(folder)
        if found > self.each:
            raise LoadError(f"{self.name}: {folder} holds {found}, sent {self.each}")
        return found < self.each

    def verify(self) -> None:
        """Check that every Maildir holds exactly what was sent (no late copies)."""
        self.pending = list(self.folders)
        if not self.done():
            first = self.pending[0]
            raise LoadError(
                f"{self.name}: {len(self.pending)} Maildirs short, e.g. {first} "
                f"holds {count_messages(first)} of {self.each}"
            )

    def last_landed(self) -> float:
        """When the last message was linked into a new/ folder, in epoch seconds."""
        stamps = (os.stat(folder / "new").st_mtime_ns for folder in self.folders)
        return max(stamps) / 1e9


class Route:
    """Postfix as a run sees it: the SMTP port, the log, the queue."""

    def __init__(self, smtp_port: int, maillog: Path, config_dir: Path) -> None:
        self.smtp_port = smtp_port
        self.tally = MaillogTally(maillog)
        self.config_dir = config_dir

    def problems(self, before: Counter[str]) -> str:
        """What went wrong since `before` (deferred, error, ...), or ''."""
        since = self.tally.read() - before
        for harmless in NOT_PROBLEMS:
            since.pop(harmless, None)
        return ", ".join(f"{count} {status}" for status, count in sorted(since.items()))

    def queue_empty(self) -> bool:
        """True when postqueue lists no message in any queue."""
        listing = subprocess.run(
            ["postqueue", "-c", str(self.config_dir), "-p"],
            capture_output=True,
            text=True,
            timeout=SETTLE_SECONDS,
            check=False,
        )
        return listing.returncode == 0 and "Mail queue is empty" in listing.stdout


@dataclass(frozen=True)
class PathFigure:
    """One run: seconds until the last landing, deliveries, Postfix's counts."""

    seconds: float
    deliveries: int
    reused: int
    warnings: int


def open_sessions(port: int) -> int:
    """TCP connections to a local port, from /proc/net/tcp (not LISTEN, TIME_WAIT)."""
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    local = f":{port:04X}"
    return sum(1 for row in rows if row[1].endswith(local) and row[3] not in IDLE)


def wait_no_sessions(peer: Peer, seconds: float) -> None:
    """Wait until Postfix's cache has closed every LMTP session to the peer."""
    deadline = time.monotonic() + seconds
    while open_sessions(peer.port):
        if time.monotonic() > deadline:
            raise LoadError(f"{peer.name}: LMTP sessions still open after {seconds} s")
        time.sleep(POLL_SECONDS * 5)


def run_path(
    cell: Cell, peer: Peer, route: Route, scratch: Path, timeout: float
) -> PathFigure:
    """Send one cell through Postfix to a peer and wait until all of it is stored."""
    landing = Landing(peer, run_mailboxes(cell, peer.name), cell.per_session)
    before = route.tally.read()
    deadline = time.monotonic() + timeout
    clients: list[Client] = []
    try:
        started = time.time()
        for session in range(cell.sessions):
            command = source_command(cell, session, peer.name, route.smtp_port)
            output = scratch / f"smtp-source-{session}.out"
            clients.append(start_client(command, output))
        seen = wait_landed(landing, clients, route, before, deadline)
        wait_clients(clients, deadline)
    finally:
        stop_clients(clients)
    deliveries = cell.messages * cell.recipients
    since = settle(route, before, deliveries)
    landing.verify()
    # new/'s mtime is when the last link was made; the poll noticed it a little later.
    seconds = min(seen, max(started, landing.last_landed())) - started
    return PathFigure(seconds, deliveries, since["reused"], since["warning"])


def start_client(command: list[str], output: Path) -> Client:
    """Start one smtp-source process, its output going to a file."""
    with open(output, "wb") as sink:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT
        )
    return Client(process, output)


def wait_landed(
    landing: Landing,
    clients: list[Client],
    route: Route,
    before: Counter[str],
    deadline: float,
) -> float:
    """Poll until every message has landed; return the wall time it was seen."""
    while not landing.done():
        for client in clients:
            if client.process.poll():
                check_client(client)
        problems = route.problems(before)
        if problems:
            raise LoadError(f"Postfix logged {problems}")
        if time.monotonic() > deadline:
            raise LoadError(f"{len(landing.pending)} Maildirs still short at deadline")
        time.sleep(POLL_SECONDS)
    return time.time()


def wait_clients(clients: list[Client], deadline: float) -> None:
    """Wait for every smtp-source to exit, then check what each said."""
    for client in clients:
        try:
            client.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise LoadError("smtp-source did not finish in time") from None
        check_client(client)


def settle(route: Route, before: Counter[str], deliveries: int) -> Counter[str]:
    """Wait until Postfix has logged every delivery and its queue is empty."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        since = route.tally.read() - before
        problems = route.problems(before)
        if problems:
            raise LoadError(f"Postfix logged {problems}")
        if since["sent"] >= deliveries and route.queue_empty():
            return since
        if time.monotonic() > deadline:
            raise LoadError(f"Postfix logged {since['sent']} of {deliveries} sent")
        time.sleep(POLL_SECONDS * 5)
