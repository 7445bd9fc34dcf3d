"""A real milter process for tests: `mdmail serve milter` on a free loopback port."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from mdcore.layout import StateRoot
from tests.lmtp_process import free_port, wait_for_ready

START_TIMEOUT = 15.0
# libmilter looks at its stop flag every 5 s or so after SIGTERM.
STOP_TIMEOUT = 30.0
REPO = Path(__file__).resolve().parent.parent


class MilterProcess:
    """One milter with its own config under folder, over an existing state root."""

    def __init__(
        self,
        folder: Path,
        root: StateRoot,
        domains: list[dict[str, Any]],
        log_level: str = "INFO",
    ) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        # The same socket in libmilter's (and sendmail's) form and in Postfix's.
        self.spec = f"inet:{self.port}@127.0.0.1"
        self.postfix_spec = f"inet:127.0.0.1:{self.port}"
        self.config_path = folder / "mdmail.yaml"
        self.log_path = folder / "milter.log"
        self.notify_path = folder / "notify.sock"
        self.process: subprocess.Popen[bytes] | None = None
        self.notify: socket.socket | None = None
        config = {
            "state_root": str(root.path),
            "hostname": "milter.test.example",
            "milter": {"socket": self.spec, "timeout": 10},
            "domains": domains,
            "log": {"level": log_level, "file": str(self.log_path)},
        }
        self.config_path.write_text(yaml.safe_dump(config))

    def start(self) -> None:
        """Start it and wait for READY=1, sent once libmilter listens."""
        self.notify_path.unlink(missing_ok=True)
        # Kept open while the milter runs: it sends STOPPING=1 when it ends.
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        command = [sys.executable, "-m", "mdmail", "--config"]
        with open(self.folder / "stderr.log", "ab") as stderr:
            self.process = subprocess.Popen(
                [*command, str(self.config_path), "serve", "milter"],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env={**os.environ, "NOTIFY_SOCKET": str(self.notify_path)},
            )
        try:
            wait_for_ready(self.notify, self.process, START_TIMEOUT)
        except TimeoutError:
            self.kill()
            raise

    def stop(self) -> int:
        """SIGTERM, as systemd stops it; wait for the exit and return its status."""
        if self.process is None:
            return 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT)
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL, as a crash would (nothing left to wait for afterwards)."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
            self.process = None
        if self.notify is not None:
            self.notify.close()
            self.notify = None

    def log_text(self) -> str:
        """The milter's log so far."""
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stderr_text(self) -> str:
        """What the process wrote to standard error (tracebacks at start)."""
        path = self.folder / "stderr.log"
        return path.read_text() if path.exists() else ""
