"""A real lmtpd process for end-to-end tests: `mdmail serve lmtp` on free ports."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mdcore.admin import Admin
from mdcore.layout import StateRoot
from tests.conftest import SECRET_HASH
from tests.processes import stop_process

START_TIMEOUT = 15.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on host right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_ready(
    channel: socket.socket, process: "subprocess.Popen[bytes]", timeout: float
) -> None:
    """Return once the server sends READY=1 (sd_notify(3)), or fail."""
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("lmtpd did not report READY=1")
        channel.settimeout(min(0.2, remaining))
        try:
            if b"READY=1" in channel.recv(4096).split(b"\n"):
                return
        except TimeoutError:
            continue
    raise TimeoutError(f"lmtpd exited with status {process.returncode} at start")


class LmtpProcess:
    """One lmtpd process with its own config and state root under folder."""

    def __init__(self, folder: Path, **lmtp: Any) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.socket_path = folder / "lmtp.sock"
        self.config_path = folder / "mdmail.yaml"
        self.log_path = folder / "lmtpd.log"
        self.root = StateRoot(folder / "state")
        self.admin = Admin(self.root)
        self.lmtp = {
            "listen": [f"inet:127.0.0.1:{self.port}", f"unix:{self.socket_path}"],
            "socket_mode": "0666",
            # MDMAIL_TEST_LMTP_WORKERS=2 runs every test on a pre-forked server.
            "workers": int(os.environ.get("MDMAIL_TEST_LMTP_WORKERS", "1")),
            **lmtp,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.notify_path = folder / "notify.sock"
        self.notify: socket.socket | None = None
        self.write_config()

    def write_config(self, **extra: Any) -> None:
        """Write the YAML config (extra keys merge at the top level)."""
        config = {
            "state_root": str(self.root.path),
            "hostname": "lmtp.test.example",
            "lmtp": self.lmtp,
            "log": {"level": "INFO", "file": str(self.log_path)},
            **extra,
        }
        self.config_path.write_text(yaml.safe_dump(config))

    def add_account(self, address: str, **options: Any) -> None:
        """Create the domain if needed and an account with password 'secret'."""
        local, _, domain = address.partition("@")
        if domain not in self.admin.domains():
            self.admin.add_domain(domain)
        self.admin.add_account(domain, local, SECRET_HASH, hashed=True, **options)

    def maildir(self, address: str) -> Path:
        """The Maildir of an account."""
        local, _, domain = address.partition("@")
        return self.admin.tree(domain).maildir(local)

    def messages(self, address: str) -> list[Path]:
        """The files in new/ of an account, sorted by name."""
        return sorted((self.maildir(address) / "new").iterdir())

    def start(self) -> None:
        """Start the server and wait until it reports ready, as systemd would.

        READY=1 comes once every listener accepts and the signal handlers are
        in place, so a test may connect (over TCP or the unix socket) or send
        SIGTERM and SIGHUP at once; probing the port would be too early for both.
        """
        command = [sys.executable, "-m", "mdmail", "--config", str(self.config_path)]
        notify = self._open_notify()
        with open(self.folder / "stderr.log", "ab") as stderr:
            self.process = subprocess.Popen(
                [*command, "serve", "lmtp"],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env={**os.environ, "NOTIFY_SOCKET": str(self.notify_path)},
            )
        try:
            wait_for_ready(notify, self.process, START_TIMEOUT)
        except TimeoutError:
            self.kill()
            raise

    def _open_notify(self) -> socket.socket:
        # Kept open while the server runs: it also sends STOPPING=1, and a
        # notify socket nobody listens on would make that send fail.
        self.close_notify()
        self.notify_path.unlink(missing_ok=True)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        return self.notify

    def close_notify(self) -> None:
        """Close the readiness socket (once the server has ended)."""
        if self.notify is not None:
            self.notify.close()
            self.notify = None

    def stop(self, timeout: float = 40.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.process is None:
            return 0
        status = stop_process(self.process, timeout)
        self.process = None
        return status

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def signal(self, signum: int) -> None:
        """Send a signal to the running server."""
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def log_text(self) -> str:
        """The server log so far."""
        return self.log_path.read_text() if self.log_path.exists() else ""


@pytest.fixture
def lmtp_server(tmp_path: Path) -> Iterator[LmtpProcess]:
    """A configured but not yet started lmtpd; stopped at the end of the test."""
    server = LmtpProcess(tmp_path / "lmtpd")
    try:
        yield server
    finally:
        if server.process is not None:
            server.stop()
        server.close_notify()
