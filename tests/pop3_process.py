"""A real POP3 proxy for end-to-end tests: `mdmail serve pop3` on free ports.

Listeners on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (all loopback, no set-up
needed) share one port, so a test picks the domain by the address it dials.
`PopWire` is a raw client that reads whole replies as bytes.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from mdcore.admin import Admin
from mdcore.layout import StateRoot
from mdcore.passwords import hash_password
from tests.conftest import deliver_message
from tests.processes import stop_process

DEADLINE = 20.0
ADDRESSES = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
HOSTNAME = "pop.test.example"


def free_port() -> int:
    """A TCP port free on every local address right now."""
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_port(host: str, port: int) -> None:
    """Return once host:port accepts a connection, or fail after the deadline."""
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port}") from None
            time.sleep(0.02)


class Pop3Process:
    """One POP3 proxy process with its own config and state root under folder."""

    def __init__(
        self,
        folder: Path,
        addresses: tuple[str, ...] = ADDRESSES,
        tls: bool = False,
        **pop3: Any,
    ) -> None:
        """Prepare the config: plain listeners on each address, POP3S if `tls`."""
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.addresses = addresses
        self.port = free_port()
        self.tls_port = free_port() if tls else 0
        self.config_path = folder / "mdmail.yaml"
        self.log_path = folder / "pop3proxy.log"
        self.root = StateRoot(folder / "state")
        self.admin = Admin(self.root)
        self.pop3: dict[str, Any] = {
            "listen": [f"inet:{address}:{self.port}" for address in addresses],
            "tls_listen": [f"inet:{address}:{self.tls_port}" for address in addresses]
            if tls
            else [],
            **pop3,
        }
        self.domains: list[dict[str, Any]] = []
        self.process: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        """Write the YAML config from `pop3` and `domains`."""
        config = {
            "state_root": str(self.root.path),
            "hostname": HOSTNAME,
            "pop3": self.pop3,
            "domains": self.domains,
            "log": {"level": "DEBUG", "file": str(self.log_path)},
        }
        self.config_path.write_text(yaml.safe_dump(config))

    def add_account(self, address: str, password: str, **options: Any) -> None:
        """Create the domain if needed and an account with this password."""
        local, _, domain = address.partition("@")
        if domain not in self.admin.domains():
            self.admin.add_domain(domain)
        # SHA512-CRYPT checks in milliseconds; the default Argon2 would slow tests.
        stored = hash_password(password, "SHA512-CRYPT")
        self.admin.add_account(domain, local, stored, hashed=True, **options)

    def maildir(self, address: str) -> Path:
        """The Maildir of an account."""
        local, _, domain = address.partition("@")
        return self.admin.tree(domain).maildir(local)

    def put(self, address: str, message: bytes) -> None:
        """Deliver one message the way the LMTP server does (stored with LF)."""
        deliver_message(self.maildir(address), address, message)

    def stored(self, address: str) -> list[Path]:
        """The message files of an account (new/ and cur/), sorted by name."""
        maildir = self.maildir(address)
        return sorted([*(maildir / "new").iterdir(), *(maildir / "cur").iterdir()])

    def start(self) -> None:
        """Write the config, start the server and wait until every port accepts."""
        self.write_config()
        command = [sys.executable, "-m", "mdmail", "--config", str(self.config_path)]
        self.process = subprocess.Popen(
            [*command, "serve", "pop3"],
            stdout=subprocess.DEVNULL,
            stderr=open(self.folder / "stderr.log", "ab"),  # noqa: SIM115
        )
        try:
            for address in self.addresses:
                wait_for_port(address, self.port)
                if self.tls_port:
                    wait_for_port(address, self.tls_port)
        except TimeoutError:
            self.kill()
            raise

    def stop(self, timeout: float = DEADLINE) -> int:
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

    def domain_log(self, domain: str) -> str:
        """The domain's own log so far."""
        path = self.admin.tree(domain).logs / "mail.log"
        return path.read_text() if path.exists() else ""


class PopWire:
    """A raw POP3 client: send lines, read status lines and whole listings."""

    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        """Connect (and handshake at once for POP3S when `context` is given)."""
        self.sock: socket.socket = socket.create_connection((host, port), DEADLINE)
        if context is not None:
            self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        """Send raw bytes."""
        self.sock.sendall(data)

    def line(self) -> bytes:
        """One line with its CRLF; b"" at end of file."""
        while b"\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                rest, self.buffer = self.buffer, b""
                return rest
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line + b"\r\n"

    def command(self, text: str) -> bytes:
        """Send a command; its status line."""
        self.send(text.encode() + b"\r\n")
        return self.line()

    def listing(self) -> bytes:
        """The body of a multi-line response up to and with the final "." CRLF."""
        lines = []
        while (line := self.line()) != b".\r\n":
            assert line, "connection closed inside a multi-line response"
            lines.append(line)
        return b"".join([*lines, b".\r\n"])

    def rest(self) -> bytes:
        """Everything until the server closes the connection."""
        chunks = [self.buffer]
        self.buffer = b""
        while data := self.sock.recv(65536):
            chunks.append(data)
        return b"".join(chunks)

    def login(self, user: str, password: str) -> bytes:
        """USER and PASS; the reply to PASS."""
        assert self.command(f"USER {user}") == b"+OK Send PASS\r\n"
        return self.command(f"PASS {password}")

    def starttls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        """STLS and the handshake."""
        self.send(b"STLS\r\n")
        self.handshake(context, server_hostname)

    def handshake(self, context: ssl.SSLContext, server_hostname: str) -> None:
        """Read the +OK to an STLS already sent, then run the TLS handshake."""
        assert self.line() == b"+OK Begin TLS negotiation now\r\n"
        assert self.buffer == b""
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def unstuff(body: bytes) -> bytes:
    """The message octets of a RETR body: terminator removed, dots un-stuffed."""
    assert body.endswith(b".\r\n")
    lines = body[:-3].split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)
