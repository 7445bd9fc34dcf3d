"""The LMTP servers the benchmark compares: a private Dovecot instance and ours.

Both are given the same mailboxes: the addresses `smtp-source -r N -t BASE` sends
to (BASE, then 2BASE up to NBASE), one base per session, spread over a few domains.
"""

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mdcore.admin import Admin
from mdcore.layout import StateRoot

DOMAINS = 4
HOST = "127.0.0.1"
MAIL_UID = 65534  # nobody: Dovecot refuses to deliver as root by default
START_SECONDS = 30.0
STOP_SECONDS = 15.0


class PeerError(Exception):
    """A server could not be started or died."""


@dataclass(frozen=True)
class Mailbox:
    """One account that a benchmark session delivers to."""

    local: str
    domain: str

    @property
    def address(self) -> str:
        """The address as smtp-source writes it."""
        return f"{self.local}@{self.domain}"


def session_base(session: int) -> Mailbox:
    """The -t address of one smtp-source session."""
    return Mailbox(f"s{session:02d}", f"d{session % DOMAINS + 1}.test")


def session_mailboxes(session: int, recipients: int) -> list[Mailbox]:
    """The recipients of one session: smtp-source prefixes 2..N to the base."""
    base = session_base(session)
    prefixed = [f"{number}{base.local}" for number in range(2, recipients + 1)]
    return [base, *(Mailbox(local, base.domain) for local in prefixed)]


def all_mailboxes(sessions: int, recipients: int) -> list[Mailbox]:
    """Every mailbox a run with at most these sessions and recipients uses."""
    return [
        mailbox
        for session in range(sessions)
        for mailbox in session_mailboxes(session, recipients)
    ]


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, alive: "Peer", seconds: float) -> None:
    """Return once the port accepts a connection; PeerError on deadline or death."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive.running():
            raise PeerError(f"{alive.name} exited while starting:\n{alive.log_tail()}")
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.05)
    raise PeerError(f"{alive.name} did not listen on port {port} in {seconds:.0f} s")


def pid_running(pid: int) -> bool:
    """True while a process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


class Peer(Protocol):
    """A server under test, started once and reused for every run."""

    name: str
    port: int

    def start(self) -> None:
        """Create its accounts and start it; return once it listens."""

    def stop(self) -> None:
        """Stop it and wait until it has exited."""

    def running(self) -> bool:
        """True while the server process is alive."""

    def root_pid(self) -> int:
        """The process whose tree is the server (for memory figures)."""

    def maildir(self, mailbox: Mailbox) -> Path:
        """The Maildir a mailbox's messages land in."""

    def log_tail(self) -> str:
        """The end of its log, to explain a failure."""


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


DOVECOT_CONF = """\
base_dir = {base}/run
state_dir = {base}/state
instance_name = lmtpbench{port}
protocols = lmtp
listen = {host}
log_path = {base}/dovecot.log
ssl = no
first_valid_uid = 1
# mail_fsync is left at its default (optimized), like any Dovecot install.
passdb {{
  driver = passwd-file
  args = {base}/users
}}
userdb {{
  driver = passwd-file
  args = {base}/users
}}
mail_location = maildir:~/Maildir
service lmtp {{
  inet_listener lmtp {{
    address = {host}
    port = {port}
  }}
}}
"""


class DovecotPeer:
    """A private Dovecot instance serving LMTP only, mail owned by nobody."""

    name = "dovecot"

    def __init__(
        self, base: Path, mailboxes: Sequence[Mailbox], binary: str = "dovecot"
    ) -> None:
        self.base = base
        self.mailboxes = list(mailboxes)
        self.binary = binary
        self.port = free_port()
        self.conf = base / "dovecot.conf"
        self._master = 0

    def start(self) -> None:
        """Write the config, users and Maildirs, check the config, start dovecot."""
        self._write_files()
        self._run(["doveconf", "-c", str(self.conf), "-n"])
        self._run([self.binary, "-c", str(self.conf)])
        wait_for_port(self.port, self, START_SECONDS)

    def _run(self, command: list[str]) -> None:
        # Output goes to a file, not a pipe: the master daemonises and would keep
        # a pipe open, so reading it to the end would never finish.
        output = self.base / "start.log"
        with open(output, "wb") as sink:
            done = subprocess.run(
                command, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, check=False
            )
        if done.returncode != 0:
            raise PeerError(f"{shlex.join(command)}: {_tail(output)}")

    def _write_files(self) -> None:
        for folder in ("run", "state", "mail"):
            (self.base / folder).mkdir(parents=True, exist_ok=True)
        text = DOVECOT_CONF.format(base=self.base, host=HOST, port=self.port)
        self.conf.write_text(text)
        users = [self._user_line(mailbox) for mailbox in self.mailboxes]
        (self.base / "users").write_text("".join(users))
        for mailbox in self.mailboxes:
            make_maildir(self.maildir(mailbox), MAIL_UID)
        os.chown(self.base / "mail", MAIL_UID, MAIL_UID)

    def _user_line(self, mailbox: Mailbox) -> str:
        home = self.maildir(mailbox).parent
        return f"{mailbox.address}:{{PLAIN}}x:{MAIL_UID}:{MAIL_UID}::{home}::\n"

    def stop(self) -> None:
        """Signal the master and wait for it; its children go with it."""
        pid = self._read_master()
        if pid and pid_running(pid):
            os.kill(pid, signal.SIGTERM)
            wait_gone(pid, STOP_SECONDS)

    def _read_master(self) -> int:
        if not self._master:
            try:
                self._master = int((self.base / "run" / "master.pid").read_text())
            except (FileNotFoundError, ValueError):
                return 0
        return self._master

    def running(self) -> bool:
        """True while the master runs (it writes master.pid before listening)."""
        pid = self._read_master()
        return pid == 0 or pid_running(pid)

    def root_pid(self) -> int:
        """The dovecot master; lmtp, auth, log and the rest are its children."""
        return self._read_master()

    def maildir(self, mailbox: Mailbox) -> Path:
        """Home per domain and user, Maildir under it (mail_location)."""
        return self.base / "mail" / mailbox.domain / mailbox.local / "Maildir"

    def log_tail(self) -> str:
        """The end of dovecot.log."""
        return _tail(self.base / "dovecot.log")


OURS_CONF = """\
state_root: {state}
hostname: bench.test
lmtp:
  listen: [inet:{host}:{port}]
  max_sessions: 200
  max_message_size: 104857600
  workers: {workers}
log:
  level: WARNING
"""


class OursPeer:
    """Our LMTP server: `mdmail --config CFG serve lmtp` on a state root of its own."""

    name = "ours"

    def __init__(
        self, base: Path, mailboxes: Sequence[Mailbox], mdmail: str, workers: int = 0
    ) -> None:
        """workers is lmtp.workers: 0 (the default) is one per CPU."""
        self.base = base
        self.mailboxes = list(mailboxes)
        self.mdmail = mdmail
        self.workers = workers
        self.port = free_port()
        self.admin = Admin(StateRoot(base / "state"))
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Create the domains and accounts, write the config, start the server."""
        self.base.mkdir(parents=True, exist_ok=True)
        self._add_accounts()
        config = self.base / "mdmail.yaml"
        text = OURS_CONF.format(
            state=self.base / "state", host=HOST, port=self.port, workers=self.workers
        )
        config.write_text(text)
        command = [self.mdmail, "--config", str(config), "serve", "lmtp"]
        with open(self.base / "server.log", "wb") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # Out of the terminal's process group: Ctrl-C reaches the harness,
                # which stops the server itself.
                start_new_session=True,
            )
        wait_for_port(self.port, self, START_SECONDS)

    def _add_accounts(self) -> None:
        for domain in sorted({mailbox.domain for mailbox in self.mailboxes}):
            self.admin.add_domain(domain)
        for mailbox in self.mailboxes:
            # A stored hash: no Argon2 run per account while setting up.
            self.admin.add_account(
                mailbox.domain, mailbox.local, "{PLAIN}x", hashed=True
            )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited in time."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def running(self) -> bool:
        """True while the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def root_pid(self) -> int:
        """The server's own process."""
        return self._process.pid if self._process else 0

    def maildir(self, mailbox: Mailbox) -> Path:
        """Where the state root keeps the account's Maildir."""
        return self.admin.tree(mailbox.domain).maildir(mailbox.local)

    def log_tail(self) -> str:
        """The end of the server's stdout and stderr."""
        return _tail(self.base / "server.log")


def make_maildir(path: Path, uid: int) -> None:
    """Create a Maildir and its home, owned by uid."""
    for folder in (path.parent, path, path / "tmp", path / "new", path / "cur"):
        folder.mkdir(parents=True, exist_ok=True)
        os.chown(folder, uid, uid)


def wait_gone(pid: int, seconds: float) -> None:
    """Wait for a process that is not our child to exit; SIGKILL it at the deadline."""
    deadline = time.monotonic() + seconds
    while pid_running(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.05)


def stop_all(peers: Iterable[Peer]) -> None:
    """Stop every peer, even when one of them fails to stop."""
    for peer in peers:
        try:
            peer.stop()
        except OSError as error:
            print(f"stopping {peer.name}: {error}", file=sys.stderr)


def remove_tree(path: Path) -> None:
    """Delete the benchmark's folder."""
    shutil.rmtree(path, ignore_errors=True)
