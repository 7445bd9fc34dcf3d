"""Stopping a server process the way systemd does, shared by the process fixtures."""

import signal
import subprocess


def stop_process(process: "subprocess.Popen[bytes]", timeout: float) -> int:
    """SIGTERM and wait up to timeout; SIGKILL if it is still running. Exit status."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
