"""A real lmtpd process for end-to-end tests: `mdmail serve lmtp` on free ports."""

import os
import signal
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

START_TIMEOUT = 15.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on host right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, timeout: float = START_TIMEOUT) -> None:
    """Return once host:port accepts a connection, or fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port}") from None
            time.sleep(0.02)


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
            **lmtp,
        }
        self.process: subprocess.Popen[bytes] | None = None
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
        """Start the server and wait until its TCP port accepts connections."""
        command = [sys.executable, "-m", "mdmail", "--config", str(self.config_path)]
        self.process = subprocess.Popen(
            [*command, "serve", "lmtp"],
            stdout=subprocess.DEVNULL,
            stderr=open(self.folder / "stderr.log", "ab"),  # noqa: SIM115
        )
        try:
            wait_for_port("127.0.0.1", self.port)
        except TimeoutError:
            self.kill()
            raise

    def stop(self, timeout: float = 40.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.process is None:
            return 0
        self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
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
