"""systemd socket activation: lmtpd started by systemd-socket-activate (package
systemd) serves the socket it is passed, not the listeners of its config."""

import shutil
import smtplib
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lmtp_process import LmtpProcess, free_port
from tests.lmtp_wire import BODY, DEADLINE, SENDER, STORED, wait_until
from tests.processes import stop_process

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")

pytestmark = pytest.mark.skipif(
    SOCKET_ACTIVATE is None, reason="systemd-socket-activate (package systemd)"
)


def refused(port: int) -> bool:
    """True if nothing listens on 127.0.0.1:port."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_passed_socket_is_served(lmtp_server: LmtpProcess, tmp_path: Path) -> None:
    """The first connection to the passed port starts lmtpd, which answers it and
    delivers; the port of its config stays closed; SIGTERM ends it with 0."""
    assert SOCKET_ACTIVATE is not None
    lmtp_server.add_account("foo@abc.example")
    passed = free_port()
    command = [
        SOCKET_ACTIVATE,
        "--listen",
        f"127.0.0.1:{passed}",
        "--fdname",
        "lmtp",
        # It starts the service with only the environment it is told to pass.
        "--setenv",
        "PATH",
        sys.executable,
        "-m",
        "mdmail",
        "--config",
        str(lmtp_server.config_path),
        "serve",
        "lmtp",
    ]
    with open(tmp_path / "activate.log", "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=output)
    try:
        # Its own line, not a probe: a probe connection would start lmtpd.
        log = tmp_path / "activate.log"
        wait_until(lambda: b"Listening on" in log.read_bytes(), "the passed socket")

        client = smtplib.LMTP("127.0.0.1", passed, timeout=DEADLINE)
        try:
            assert client.ehlo("client.example")[0] == 250
            refusals = client.sendmail(SENDER, ["foo@abc.example"], BODY)
            assert refusals == {}
        finally:
            client.quit()

        (message,) = lmtp_server.messages("foo@abc.example")
        assert message.read_bytes().endswith(STORED)
        assert refused(lmtp_server.port)
        assert "using 1 socket(s) passed by systemd" in lmtp_server.log_text()
    finally:
        status = stop_process(process, 40.0)
    assert status == 0
