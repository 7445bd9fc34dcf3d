"""End to end: a real lmtpd's session limits, signals, start-up and sockets."""

import contextlib
import os
import signal
import stat
import time

from tests.conftest import SECRET_HASH
from tests.lmtp_process import LmtpProcess
from tests.lmtp_wire import (
    BODY,
    GO_AHEAD,
    GREETING,
    MAIL_OK,
    SENDER,
    SHUTTING_DOWN,
    Wire,
    dot_stuffed,
    envelope,
    lhlo_reply,
    rcpt_ok,
    refused,
    saved,
    wait_until,
)

EXIT_DEADLINE = 10.0
TOO_MANY = "421 4.3.2 Too many connections, try again later"


def held_session(server: LmtpProcess) -> Wire:
    """A connection that got the greeting.

    A connection the test just closed counts as a session until the server has
    seen it close, so a 421 is retried until a deadline.
    """

    def attempt() -> Wire | None:
        wire = Wire.tcp(server)
        if wire.reply() == GREETING:
            return wire
        wire.close()
        return None

    return wait_until(attempt, "a session slot")


def exit_status(server: LmtpProcess) -> int:
    """Wait for the process to end by itself (after our signal); its status."""
    assert server.process is not None
    status = server.process.wait(EXIT_DEADLINE)
    server.process = None
    return status


# Session limits.


def test_max_sessions(lmtp_server: LmtpProcess) -> None:
    """With max_sessions 2, a third connection gets 421 4.3.2 and is closed."""
    lmtp_server.lmtp["max_sessions"] = 2
    lmtp_server.write_config()
    lmtp_server.start()

    first, second = held_session(lmtp_server), held_session(lmtp_server)
    with Wire.tcp(lmtp_server) as third:
        assert third.reply() == TOO_MANY
        assert third.closed()
    first.close()
    with held_session(lmtp_server) as again:
        again.send(b"QUIT\r\n")
        assert again.reply() == "221 2.0.0 lmtp.test.example closing connection"
    second.close()


def test_idle_timeout(lmtp_server: LmtpProcess) -> None:
    """With idle_timeout 1 s, a silent client gets 421 4.4.2 and is closed."""
    lmtp_server.lmtp["idle_timeout"] = 1
    lmtp_server.write_config()
    lmtp_server.start()

    with Wire.greeted(lmtp_server) as wire:
        assert wire.reply() == "421 4.4.2 Timeout waiting for input, closing connection"
        assert wire.closed()
    assert ": timeout from 127.0.0.1:" in lmtp_server.log_text()


def test_client_that_stops_reading_loses_its_session(lmtp_server: LmtpProcess) -> None:
    """A client that sends but never reads is cut off after idle_timeout too."""
    lmtp_server.lmtp.update(max_sessions=1, idle_timeout=1)
    lmtp_server.write_config()
    lmtp_server.start()
    stalled = held_session(lmtp_server)

    # Pipelined NOOPs until both directions are full: the server's replies
    # pile up unread, so it stops reading, and our send would block.
    stalled.sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            stalled.sock.send(b"NOOP\r\n" * 8192)

    with held_session(lmtp_server) as wire:
        wire.send(b"QUIT\r\n")
        assert wire.reply() == "221 2.0.0 lmtp.test.example closing connection"
    stalled.close()
    assert ": timeout writing to 127.0.0.1:" in lmtp_server.log_text()


# Signals.


def test_sigterm_closes_idle_sessions(lmtp_server: LmtpProcess) -> None:
    """SIGTERM: every idle session gets 421 4.3.2; the process exits 0."""
    lmtp_server.add_account("foo@abc.example")
    lmtp_server.start()
    greeted_only = Wire.greeted(lmtp_server, lhlo=False)
    after_lhlo = Wire.greeted(lmtp_server)
    in_envelope = Wire.greeted(lmtp_server)
    in_envelope.send(envelope(SENDER, "foo@abc.example"))
    assert in_envelope.replies(2) == [MAIL_OK, rcpt_ok("foo@abc.example")]

    lmtp_server.signal(signal.SIGTERM)

    for wire in (greeted_only, after_lhlo, in_envelope):
        assert wire.reply() == SHUTTING_DOWN
        assert wire.closed()
        wire.close()
    assert exit_status(lmtp_server) == 0
    assert not lmtp_server.socket_path.exists()
    assert lmtp_server.messages("foo@abc.example") == []


def test_sigterm_lets_a_message_in_flight_finish(lmtp_server: LmtpProcess) -> None:
    """SIGTERM mid-DATA: the client finishes and gets its 250s, then exit 0."""
    for address in ("foo@abc.example", "foo@xyz.example"):
        lmtp_server.add_account(address)
    lmtp_server.start()
    rcpt_tos = ["foo@abc.example", "foo@xyz.example"]
    with Wire.greeted(lmtp_server) as idle, Wire.greeted(lmtp_server) as sending:
        sending.send(envelope(SENDER, *rcpt_tos) + b"DATA\r\n")
        assert sending.replies(4) == [MAIL_OK, *map(rcpt_ok, rcpt_tos), GO_AHEAD]
        sending.send(b"Subject: in flight\r\n\r\nfirst half\r\n")

        lmtp_server.signal(signal.SIGTERM)

        # The idle session is told at once, and new connections are refused.
        assert idle.reply() == SHUTTING_DOWN
        wait_until(lambda: refused(lmtp_server.port), "the listener to close")
        sending.send(b"second half\r\n.\r\n")
        assert sending.replies(3) == [*map(saved, rcpt_tos), SHUTTING_DOWN]
        assert sending.closed()
    assert exit_status(lmtp_server) == 0
    (message,) = lmtp_server.messages("foo@xyz.example")
    assert message.read_bytes() == (
        b"Return-Path: <sender@outside.example>\n"
        b"Subject: in flight\n\nfirst half\nsecond half\n"
    )


def test_sighup_sees_an_account_added_by_hand(lmtp_server: LmtpProcess) -> None:
    """SIGHUP re-reads the domains: a passwd line written by hand is an account."""
    lmtp_server.add_account("foo@abc.example")
    lmtp_server.start()
    with Wire.greeted(lmtp_server) as wire:
        wire.send(envelope(SENDER, "new@abc.example") + b"RSET\r\n")
        assert wire.replies(3) == [
            MAIL_OK,
            "550 5.1.1 <new@abc.example> User unknown",
            "250 2.0.0 OK",
        ]

        passwd = lmtp_server.root.tree("abc.example").passwd
        with passwd.open("a") as stream:
            stream.write(f"new:{SECRET_HASH}::::::\n")
        lmtp_server.signal(signal.SIGHUP)
        wait_until(lambda: "reloaded" in lmtp_server.log_text(), "the reload")

        # The session opened before the reload goes on, and sees the account.
        wire.send(envelope(SENDER, "new@abc.example") + b"DATA\r\n")
        assert wire.replies(3) == [MAIL_OK, rcpt_ok("new@abc.example"), GO_AHEAD]
        wire.send(dot_stuffed(BODY))
        assert wire.reply() == saved("new@abc.example")
    assert len(lmtp_server.messages("new@abc.example")) == 1


def test_sighup_takes_a_new_config(lmtp_server: LmtpProcess) -> None:
    """SIGHUP re-reads the config file: a new size limit applies to new sessions."""
    lmtp_server.add_account("foo@abc.example")
    lmtp_server.start()
    lmtp_server.lmtp["max_message_size"] = 4096
    lmtp_server.write_config()

    lmtp_server.signal(signal.SIGHUP)
    wait_until(
        lambda: "lmtpd: configuration reloaded from" in lmtp_server.log_text(),
        "the reload",
    )

    with Wire.tcp(lmtp_server) as wire:
        wire.send(b"LHLO client.example\r\n")
        wire.send(envelope(SENDER, "foo@abc.example", params="SIZE=5000"))
        assert wire.replies(3) == [
            GREETING,
            lhlo_reply(4096),
            "552 5.3.4 Message exceeds the maximum message size",
        ]
    assert lmtp_server.stop() == 0


# Start-up and sockets.


def test_startup_removes_stale_staged_files(lmtp_server: LmtpProcess) -> None:
    """Start-up removes staged files idle for lmtp.tmp_max_age; fresh ones stay."""
    lmtp_server.lmtp["tmp_max_age"] = 1
    lmtp_server.write_config()
    staging = lmtp_server.root.staging
    staging.mkdir(parents=True)
    old, fresh = staging / "1700000000.M1P1Q1.crashed", staging / "in-use"
    old.write_bytes(b"left over from a crash")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    # A file counts as idle only when its ctime is old too (a rename or write sets
    # it, as on a live staged file), and no call can set ctime: let it age.
    wait_until(lambda: time.time() - old.stat().st_ctime > 1.1, "the file to age")
    fresh.write_bytes(b"being received")
    # Touched in the future, so that a slow start cannot make it look idle.
    os.utime(fresh, (time.time() + 3600, time.time() + 3600))

    lmtp_server.start()

    assert sorted(staging.iterdir()) == [fresh]
    assert "lmtpd: removed 1 stale staged file(s)" in lmtp_server.log_text()


def test_unix_socket_mode_and_removal(lmtp_server: LmtpProcess) -> None:
    """The unix socket gets socket_mode 0666 and is removed on stop."""
    lmtp_server.start()

    status = lmtp_server.socket_path.stat()
    assert stat.S_ISSOCK(status.st_mode)
    assert stat.S_IMODE(status.st_mode) == 0o666
    assert lmtp_server.stop() == 0
    assert not lmtp_server.socket_path.exists()
