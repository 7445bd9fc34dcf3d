"""A real web page process for end-to-end tests: `mdmail serve web` on a free port."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.pop3_process import DEADLINE, free_port, wait_for_port
from tests.processes import stop_process


class WebProcess:
    """One `mdmail serve web` on 127.0.0.1 and a port picked at run time."""

    def __init__(self, config_path: Path, folder: Path) -> None:
        """Serve with this config; stderr goes to folder/web-stderr.log."""
        self.config_path = config_path
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, host: str, path: str = "/") -> str:
        """The URL of a page under a host name (mapped to 127.0.0.1 by the test)."""
        return f"http://{host}:{self.port}{path}"

    def start(self) -> None:
        """Start the server and wait until its port accepts connections."""
        command = [sys.executable, "-m", "mdmail", "--config", str(self.config_path)]
        listen = ["serve", "web", "--listen", f"127.0.0.1:{self.port}"]
        self.process = subprocess.Popen(
            [*command, *listen],
            stdout=subprocess.DEVNULL,
            stderr=open(self.folder / "web-stderr.log", "ab"),  # noqa: SIM115
        )
        try:
            wait_for_port("127.0.0.1", self.port)
        except TimeoutError:
            self.process.kill()
            self.process.wait()
            raise

    def stop(self) -> int:
        """SIGTERM and wait; the exit status."""
        if self.process is None:
            return 0
        status = stop_process(self.process, DEADLINE)
        self.process = None
        return status
