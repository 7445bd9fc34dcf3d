"""One benchmark run: parallel smtp-source sessions, then a count of what landed."""

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from peers import HOST, Mailbox, Peer, session_base, session_mailboxes

SMTP_SOURCE = "smtp-source"
KB = 1024


class LoadError(Exception):
    """A run that produced no valid figure: a client failed, timed out, or mail
    that was accepted did not land in the Maildirs."""


@dataclass(frozen=True)
class Cell:
    """One point of the matrix: message size, recipients per message, sessions."""

    size: int
    recipients: int
    sessions: int
    per_session: int

    @property
    def messages(self) -> int:
        """Messages sent in one run of this cell, all sessions together."""
        return self.sessions * self.per_session

    @property
    def label(self) -> str:
        """The cell as the table shows it."""
        size = (
            f"{self.size // KB} KB" if self.size < KB * KB else f"{self.size >> 20} MB"
        )
        return f"{size}, {self.recipients} rcpt, {self.sessions} sess"


def source_command(cell: Cell, session: int, port: int) -> list[str]:
    """smtp-source for one session: LMTP, one connection kept for all messages."""
    return [
        SMTP_SOURCE,
        "-L",
        "-d",
        "-s",
        "1",
        "-m",
        str(cell.per_session),
        "-r",
        str(cell.recipients),
        "-l",
        str(cell.size),
        "-f",
        "sender@src.test",
        "-M",
        "bench.test",
        "-t",
        session_base(session).address,
        f"{HOST}:{port}",
    ]


@dataclass(frozen=True)
class Client:
    """One smtp-source process and the file its output goes to."""

    process: "subprocess.Popen[bytes]"
    output: Path


def run_load(cell: Cell, peer: Peer, scratch: Path, timeout: float) -> float:
    """Run the cell's sessions in parallel against a peer; return the wall time."""
    clients: list[Client] = []
    try:
        started = time.monotonic()
        for session in range(cell.sessions):
            clients.append(_start_client(cell, session, peer.port, scratch))
        _wait_all(clients, started + timeout)
        elapsed = time.monotonic() - started
        _check_clients(clients)
        return elapsed
    finally:
        stop_clients(clients)


def _start_client(cell: Cell, session: int, port: int, scratch: Path) -> Client:
    output = scratch / f"smtp-source-{session}.out"
    with open(output, "wb") as sink:
        process = subprocess.Popen(
            source_command(cell, session, port),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    return Client(process, output)


def _wait_all(clients: list[Client], deadline: float) -> None:
    for client in clients:
        try:
            client.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise LoadError("smtp-source did not finish in time") from None


def _check_clients(clients: list[Client]) -> None:
    for client in clients:
        check_client(client)


def check_client(client: Client) -> None:
    """LoadError if smtp-source failed: it says nothing when all goes well."""
    said = client.output.read_text(errors="replace").strip()
    if client.process.returncode != 0 or said:
        first = said.splitlines()[0] if said else "(no output)"
        raise LoadError(f"smtp-source exit {client.process.returncode}: {first}")


def stop_clients(clients: list[Client]) -> None:
    """Kill the smtp-source processes still running and remove their output files."""
    for client in clients:
        if client.process.poll() is None:
            client.process.kill()
            client.process.wait()
        client.output.unlink(missing_ok=True)


def count_messages(maildir: Path) -> int:
    """Messages delivered to a Maildir: files in new/ and cur/."""
    return sum(
        1
        for folder in ("new", "cur")
        for entry in os.scandir(maildir / folder)
        if entry.is_file() and not entry.name.startswith(".")
    )


def verify_stored(cell: Cell, peer: Peer) -> int:
    """Check that every recipient of every session got every message."""
    stored = 0
    for session in range(cell.sessions):
        for mailbox in session_mailboxes(session, cell.recipients):
            found = count_messages(peer.maildir(mailbox))
            if found != cell.per_session:
                raise LoadError(
                    f"{peer.name}: {mailbox.address} holds {found} messages, "
                    f"{cell.per_session} were sent"
                )
            stored += found
    return stored


# ext4 without a journal (this machine's disk: fsync runs ext4_fsync_nojournal)
# does not hand out an inode freed in the last 5 seconds (10 while its inode
# table block is dirty): every new file's inode is found by stepping over each
# one freed since, in the kernel (recently_deleted() in fs/ext4/ialloc.c). A run
# started just after the last one's messages were deleted pays that walk on
# each file it creates, both servers alike, the more so the more was deleted:
# measured with `perf record -a`, it was 30% of our server's CPU at 1 KB,
# 1 rcpt, 20 sessions, and rates fell by half over a 20-minute run.
INODE_REUSE_SECONDS = 6.0


def clear_and_settle(
    peer: Peer, mailboxes: list[Mailbox], settle: float = INODE_REUSE_SECONDS
) -> None:
    """Empty the Maildirs, write that out, and wait until the freed inodes are old."""
    clear_maildirs(peer, mailboxes)
    # The deletions reach the disk now, not during the next run; once written
    # out, the inode table blocks are clean and the shorter delay applies.
    os.sync()
    time.sleep(settle)


def clear_maildirs(peer: Peer, mailboxes: list[Mailbox]) -> None:
    """Empty tmp/, new/, cur/ and drop index and quota files, keeping the folders."""
    for mailbox in mailboxes:
        maildir = peer.maildir(mailbox)
        for entry in os.scandir(maildir):
            if entry.name in ("tmp", "new", "cur"):
                _empty(Path(entry.path))
            elif entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


def _empty(folder: Path) -> None:
    for entry in os.scandir(folder):
        os.unlink(entry.path)
