"""End to end with outside LMTP clients: swaks and Postfix's smtp-source."""

import shutil
import subprocess

import pytest

from tests.lmtp_process import LmtpProcess
from tests.lmtp_wire import (
    GO_AHEAD,
    GREETING,
    MAIL_OK,
    SENDER,
    lhlo_reply,
    rcpt_ok,
    saved,
)

CLIENT_DEADLINE = 60.0

needs_swaks = pytest.mark.skipif(shutil.which("swaks") is None, reason="no swaks")
needs_smtp_source = pytest.mark.skipif(
    shutil.which("smtp-source") is None, reason="no smtp-source (Postfix)"
)


def swaks(server: LmtpProcess, transport: str, rcpt_tos: list[str]) -> tuple[int, str]:
    """Send one message with swaks over TCP or the unix socket: (exit code, output)."""
    where = (
        ["--server", f"127.0.0.1:{server.port}"]
        if transport == "tcp"
        else ["--socket", str(server.socket_path)]
    )
    command = ["swaks", "--protocol", "LMTP", *where, "--helo", "client.example"]
    command += ["--from", SENDER, "--to", ",".join(rcpt_tos)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=CLIENT_DEADLINE, check=False
    )
    return done.returncode, done.stdout


def server_lines(transcript: str) -> list[str]:
    """The lines swaks shows as received from the server ("<-", or "<**" if bad)."""
    return [
        line.split(" ", 1)[1].lstrip()
        for line in transcript.splitlines()
        if line.startswith(("<- ", "<** "))
    ]


@needs_swaks
@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_swaks(lmtp_server: LmtpProcess, transport: str) -> None:
    """swaks --protocol LMTP: one reply per accepted recipient after the dot."""
    for address in ("foo@abc.example", "bar@abc.example", "foo@xyz.example"):
        lmtp_server.add_account(address)
    lmtp_server.start()
    rcpt_tos = [
        "foo@abc.example",
        "nobody@abc.example",
        "bar@abc.example",
        "foo@xyz.example",
    ]

    status, transcript = swaks(lmtp_server, transport, rcpt_tos)

    assert status == 0, transcript
    accepted = [rcpt for rcpt in rcpt_tos if not rcpt.startswith("nobody")]
    assert server_lines(transcript) == [
        GREETING,
        *lhlo_reply().split("\n"),
        MAIL_OK,
        rcpt_ok("foo@abc.example"),
        "550 5.1.1 <nobody@abc.example> User unknown",
        rcpt_ok("bar@abc.example"),
        rcpt_ok("foo@xyz.example"),
        GO_AHEAD,
        *map(saved, accepted),
        "221 2.0.0 lmtp.test.example closing connection",
    ]
    for address in accepted:
        assert len(lmtp_server.messages(address)) == 1


@needs_swaks
def test_swaks_without_accepted_recipient(lmtp_server: LmtpProcess) -> None:
    """swaks exits 24 (no recipient accepted) when every RCPT is refused."""
    lmtp_server.add_account("foo@abc.example")
    lmtp_server.start()

    status, transcript = swaks(lmtp_server, "tcp", ["nobody@abc.example"])

    assert status == 24, transcript
    assert "<** 550 5.1.1 <nobody@abc.example> User unknown" in transcript


@needs_smtp_source
@pytest.mark.parametrize("transport", ["inet", "unix"])
def test_smtp_source_sessions(lmtp_server: LmtpProcess, transport: str) -> None:
    """smtp-source -L: 20 messages in 4 parallel sessions, 3 recipients each."""
    # smtp-source -r 3 -t foo@... sends to 3foo@, 2foo@ and foo@.
    recipients = ["foo@abc.example", "2foo@abc.example", "3foo@abc.example"]
    for address in recipients:
        lmtp_server.add_account(address)
    lmtp_server.start()

    command = ["smtp-source", "-L", "-d", "-s", "4", "-m", "20", "-r", "3"]
    command += ["-M", "client.example", "-f", SENDER, "-t", "foo@abc.example"]
    where = (
        f"inet:127.0.0.1:{lmtp_server.port}"
        if transport == "inet"
        else f"unix:{lmtp_server.socket_path}"
    )
    done = subprocess.run(
        [*command, where],
        capture_output=True,
        text=True,
        timeout=CLIENT_DEADLINE,
        check=False,
    )

    assert (done.returncode, done.stderr) == (0, "")
    for address in recipients:
        assert len(lmtp_server.messages(address)) == 20
    sent = [
        line for line in lmtp_server.log_text().splitlines() if "status=sent" in line
    ]
    assert len(sent) == 60
