"""One benchmark run: parallel smtp-source sessions, then a count of what landed."""

import os
import stat
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
# does not hand out an inode freed in the last 60 seconds, or 360 while the
# inode table block that holds it is dirty, which a run creating files nearby
# keeps it: each new file's inode is found by stepping over every such inode, in
# the kernel (recently_deleted() in fs/ext4/ialloc.c). Measured here: creating
# an empty file took 20-25 us on a quiet filesystem and 320-700 us within a
# minute or two after 3,000-12,000 files were deleted, and `perf record -a` put
# a fifth to a third of our server's CPU in that walk when runs emptied the
# Maildirs between them (both servers pay it per file, so it pulls every ratio
# towards 1). So no run frees an inode: its folders are set aside whole, by
# rename, and the spent ones go with the scratch folder at the end.


class SpentFolders:
    """Where the folders of finished runs are kept until the benchmark ends."""

    def __init__(self, root: Path) -> None:
        """root must be on the Maildirs' filesystem (rename(2) moves them)."""
        self.root = root
        self.count = 0

    def set_aside(self, entry: Path, make_again: bool = False) -> None:
        """Move a file or folder here by rename; make_again: an empty folder like it."""
        status = entry.lstat()
        self.root.mkdir(exist_ok=True)
        self.count += 1
        os.rename(entry, self.root / str(self.count))
        if make_again:
            entry.mkdir()
            os.chown(entry, status.st_uid, status.st_gid)
            os.chmod(entry, stat.S_IMODE(status.st_mode))


def clear_maildirs(peer: Peer, mailboxes: list[Mailbox], spent: SpentFolders) -> None:
    """Empty the Maildirs: tmp/, new/, cur/ set aside and made again, the rest gone.

    The rest is Dovecot's index files and the quota files of both servers.
    """
    for mailbox in mailboxes:
        maildir = peer.maildir(mailbox)
        for entry in os.scandir(maildir):
            spent.set_aside(Path(entry.path), entry.name in ("tmp", "new", "cur"))
    # The renames reach the disk now, not during the next run's fsyncs.
    os.sync()
