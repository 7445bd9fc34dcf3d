"""End to end through real sockets: a real lmtpd, smtplib and a raw client."""

import os
import smtplib
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.lmtp_process import LmtpProcess
from tests.lmtp_wire import (
    BODY,
    DEADLINE,
    GO_AHEAD,
    GREETING,
    MAIL_OK,
    NO_SUCH_USER,
    OK,
    RETURN_PATH,
    SENDER,
    STORED,
    TOO_BIG,
    Wire,
    deliveries,
    dot_stuffed,
    envelope,
    host,
    lhlo_reply,
    maildir_files,
    rcpt_ok,
    saved,
    send_message,
    stored_files,
    wait_until,
)

# smtplib gives the LHLO reply as its text lines without the "250-" prefixes.
LHLO_OK = "\n".join(line[4:] for line in lhlo_reply().split("\n")).encode()


@contextmanager
def lmtp_client(server: LmtpProcess, transport: str) -> Iterator[smtplib.LMTP]:
    """smtplib's LMTP client over TCP or the unix socket, greeted with LHLO."""
    if transport == "tcp":
        client = smtplib.LMTP("127.0.0.1", server.port, timeout=DEADLINE)
    else:
        client = smtplib.LMTP(str(server.socket_path), timeout=DEADLINE)
    try:
        assert client.ehlo("client.example") == (250, LHLO_OK)
        yield client
    finally:
        client.close()


# smtplib over TCP and over the unix socket: what each recipient resolves to.


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_smtplib_recipients(lmtp_server: LmtpProcess, transport: str) -> None:
    """foo@abc and foo@xyz are two mailboxes; refused recipients say why."""
    host(lmtp_server, "foo@abc.example", "foo@xyz.example")

    with lmtp_client(lmtp_server, transport) as client:
        assert client.mail(SENDER) == (250, b"2.1.0 Sender OK")
        assert client.rcpt("foo@abc.example") == (
            250,
            b"2.1.5 <foo@abc.example> Recipient OK",
        )
        assert client.rcpt("nobody@abc.example") == (
            550,
            b"5.1.1 <nobody@abc.example> User unknown",
        )
        assert client.rcpt("foo@elsewhere.example") == (
            550,
            b"5.1.2 <foo@elsewhere.example> Domain not hosted here",
        )
        assert client.rcpt("foo") == (501, b"5.1.3 <foo> Bad recipient address syntax")
        assert client.rcpt("foo@xyz.example") == (
            250,
            b"2.1.5 <foo@xyz.example> Recipient OK",
        )
        assert client.data(BODY) == (250, b"2.0.0 <foo@abc.example> Saved")
        # smtplib reads one reply after DATA; LMTP sends one per recipient.
        assert client.getreply() == (250, b"2.0.0 <foo@xyz.example> Saved")
        assert client.quit() == (221, b"2.0.0 lmtp.test.example closing connection")

    (abc,) = lmtp_server.messages("foo@abc.example")
    (xyz,) = lmtp_server.messages("foo@xyz.example")
    assert abc.parent != xyz.parent
    assert abc.read_bytes() == xyz.read_bytes() == RETURN_PATH + STORED


def test_alias_to_local_accounts_links_one_file(lmtp_server: LmtpProcess) -> None:
    """An alias to accounts of its own and another hosted domain: one inode."""
    lmtp_server.add_account("foo@xyz.example")
    lmtp_server.add_account("bar@abc.example")
    lmtp_server.admin.add_alias("abc.example", "team", ["bar", "foo@xyz.example"])
    lmtp_server.start()

    with Wire.greeted(lmtp_server) as wire:
        assert send_message(wire, ["team@abc.example"]) == [saved("team@abc.example")]

    (bar,) = lmtp_server.messages("bar@abc.example")
    (foo,) = lmtp_server.messages("foo@xyz.example")
    # Two mailboxes: no Delivered-To, and the staged file is linked, not copied.
    assert bar.read_bytes() == RETURN_PATH + STORED
    assert os.path.samefile(bar, foo)
    assert bar.stat().st_nlink == 2
    assert stored_files(lmtp_server.root.staging) == []


def test_alias_to_outside_addresses_only(lmtp_server: LmtpProcess) -> None:
    """An alias whose targets are all outside is deferred: the MTA must expand it."""
    lmtp_server.add_account("foo@abc.example")
    lmtp_server.admin.add_alias("abc.example", "away", ["someone@elsewhere.example"])
    lmtp_server.start()

    with Wire.greeted(lmtp_server) as wire:
        wire.send(envelope(SENDER, "away@abc.example"))
        assert wire.replies(2) == [
            MAIL_OK,
            "451 4.3.5 <away@abc.example> Alias to outside addresses: "
            "the MTA must expand it (see mdmail mta)",
        ]


def test_alias_to_local_and_outside_addresses(lmtp_server: LmtpProcess) -> None:
    """Local targets get the message; the outside one is left out with a warning."""
    lmtp_server.add_account("foo@abc.example")
    targets = ["foo", "friend@elsewhere.example"]
    lmtp_server.admin.add_alias("abc.example", "mixed", targets)
    lmtp_server.start()

    with Wire.greeted(lmtp_server) as wire:
        wire.send(b"XFORWARD IDENT=4A1B2C\r\n")
        assert wire.reply() == OK
        assert send_message(wire, ["mixed@abc.example"]) == [saved("mixed@abc.example")]

    (message,) = lmtp_server.messages("foo@abc.example")
    assert message.read_bytes() == (
        RETURN_PATH + b"Delivered-To: mixed@abc.example\n" + STORED
    )
    assert (
        "4A1B2C: to=<mixed@abc.example>, domain=abc.example, user=mixed, "
        "status=partial (outside targets friend@elsewhere.example are left to "
        "the MTA's alias map)"
    ) in lmtp_server.log_text()


# The raw dialogue: pipelining, one reply per recipient, body limits, BDAT.


def test_pipelined_transaction(lmtp_server: LmtpProcess) -> None:
    """LHLO MAIL RCPT RCPT DATA in one write, then body and QUIT in another."""
    host(lmtp_server, "foo@abc.example", "foo@xyz.example")

    with Wire.tcp(lmtp_server) as wire:
        wire.send(
            b"LHLO client.example\r\n"
            + envelope(SENDER, "foo@abc.example", "foo@xyz.example")
            + b"DATA\r\n"
        )
        assert wire.replies(6) == [
            GREETING,
            lhlo_reply(),
            MAIL_OK,
            rcpt_ok("foo@abc.example"),
            rcpt_ok("foo@xyz.example"),
            GO_AHEAD,
        ]
        wire.send(dot_stuffed(BODY) + b"QUIT\r\n")
        assert wire.replies(3) == [
            saved("foo@abc.example"),
            saved("foo@xyz.example"),
            "221 2.0.0 lmtp.test.example closing connection",
        ]
        assert wire.closed()
    assert len(lmtp_server.messages("foo@abc.example")) == 1
    assert len(lmtp_server.messages("foo@xyz.example")) == 1


def test_next_transaction_sent_during_a_delivery(lmtp_server: LmtpProcess) -> None:
    """Two whole transactions and QUIT in one write: the second waits for the
    first's fsyncs, and every reply comes back in order."""
    host(lmtp_server, "foo@abc.example", "foo@xyz.example")
    message = b"DATA\r\n" + dot_stuffed(BODY)

    with Wire.greeted(lmtp_server) as wire:
        wire.send(
            envelope(SENDER, "foo@abc.example")
            + message
            + envelope(SENDER, "foo@xyz.example", "foo@abc.example")
            + message
            + b"QUIT\r\n"
        )
        assert wire.replies(10) == [
            MAIL_OK,
            rcpt_ok("foo@abc.example"),
            GO_AHEAD,
            saved("foo@abc.example"),
            MAIL_OK,
            rcpt_ok("foo@xyz.example"),
            rcpt_ok("foo@abc.example"),
            GO_AHEAD,
            saved("foo@xyz.example"),
            saved("foo@abc.example"),
        ]
        assert wire.reply() == "221 2.0.0 lmtp.test.example closing connection"
        assert wire.closed()
    assert len(lmtp_server.messages("foo@abc.example")) == 2
    assert len(lmtp_server.messages("foo@xyz.example")) == 1


def test_half_close_after_the_final_dot(lmtp_server: LmtpProcess) -> None:
    """A client that shuts its sending side after the dot still gets its replies
    (the end of input waits for the delivery), and the message is stored."""
    host(lmtp_server, "foo@abc.example")

    with Wire.greeted(lmtp_server) as wire:
        wire.send(envelope(SENDER, "foo@abc.example") + b"DATA\r\n" + dot_stuffed(BODY))
        wire.sock.shutdown(socket.SHUT_WR)
        assert wire.replies(4) == [
            MAIL_OK,
            rcpt_ok("foo@abc.example"),
            GO_AHEAD,
            saved("foo@abc.example"),
        ]
        assert wire.closed()
    assert len(lmtp_server.messages("foo@abc.example")) == 1


def test_large_message_with_dot_lines(lmtp_server: LmtpProcess) -> None:
    """A body over several receive buffers, with dot lines, is stored exactly."""
    host(lmtp_server, "foo@abc.example", "foo@xyz.example")
    rcpt_tos = ["foo@abc.example", "foo@xyz.example"]
    lines = [
        b".%d leading dot" % n if n % 7 == 0 else b"line %d" % n for n in range(60000)
    ]
    body = b"Subject: large\r\n\r\n" + b"\r\n".join(lines) + b"\r\n"

    with Wire.greeted(lmtp_server) as wire:
        assert send_message(wire, rcpt_tos, body) == [saved(rcpt) for rcpt in rcpt_tos]

    (message,) = lmtp_server.messages("foo@xyz.example")
    assert message.read_bytes() == RETURN_PATH + body.replace(b"\r\n", b"\n")


def test_one_reply_per_accepted_recipient(lmtp_server: LmtpProcess) -> None:
    """After the dot: one reply for each accepted RCPT, in RCPT order, no more."""
    host(lmtp_server, "foo@abc.example", "bar@abc.example", "foo@xyz.example")

    with Wire.greeted(lmtp_server) as wire:
        wire.send(
            envelope(
                SENDER,
                "foo@xyz.example",
                "nobody@abc.example",
                "bar@abc.example",
                "foo@abc.example",
            )
            + b"DATA\r\n"
        )
        assert wire.replies(6) == [
            MAIL_OK,
            rcpt_ok("foo@xyz.example"),
            NO_SUCH_USER.format("nobody@abc.example"),
            rcpt_ok("bar@abc.example"),
            rcpt_ok("foo@abc.example"),
            GO_AHEAD,
        ]
        wire.send(dot_stuffed(BODY))
        assert wire.replies(3) == [
            saved("foo@xyz.example"),
            saved("bar@abc.example"),
            saved("foo@abc.example"),
        ]
        assert wire.nothing_more()


def test_data_without_accepted_recipient(lmtp_server: LmtpProcess) -> None:
    """DATA after only refused recipients is 503; nothing is stored."""
    host(lmtp_server, "foo@abc.example")

    with Wire.greeted(lmtp_server) as wire:
        wire.send(envelope(SENDER, "nobody@abc.example") + b"DATA\r\n")
        assert wire.replies(3) == [
            MAIL_OK,
            NO_SUCH_USER.format("nobody@abc.example"),
            "503 5.5.1 No valid recipients",
        ]
        assert wire.nothing_more()
    assert maildir_files(lmtp_server, "foo@abc.example") == []


def test_message_over_max_message_size(lmtp_server: LmtpProcess) -> None:
    """Over lmtp.max_message_size: one 552 5.3.4 per recipient, nothing stored."""
    lmtp_server.lmtp["max_message_size"] = 2048
    lmtp_server.write_config()
    host(lmtp_server, "foo@abc.example", "foo@xyz.example")
    rcpt_tos = ["foo@abc.example", "foo@xyz.example"]

    with Wire.tcp(lmtp_server) as wire:
        wire.send(b"LHLO client.example\r\nMAIL FROM:<a@b.example> SIZE=4096\r\n")
        assert wire.replies(3) == [
            GREETING,
            lhlo_reply(2048),
            "552 5.3.4 Message exceeds the maximum message size",
        ]
        body = b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 60
        assert send_message(wire, rcpt_tos, body) == [
            TOO_BIG.format(rcpt) for rcpt in rcpt_tos
        ]
        assert wire.nothing_more()
    for rcpt in rcpt_tos:
        assert maildir_files(lmtp_server, rcpt) == []
    assert stored_files(lmtp_server.root.staging) == []


def test_line_over_max_line_length(lmtp_server: LmtpProcess) -> None:
    """A body line over lmtp.max_line_length: one 552 per recipient."""
    host(lmtp_server, "foo@abc.example", "foo@xyz.example")
    rcpt_tos = ["foo@abc.example", "foo@xyz.example"]

    with Wire.greeted(lmtp_server) as wire:
        body = b"Subject: long\r\n\r\n" + b"y" * 1200 + b"\r\n"
        assert send_message(wire, rcpt_tos, body) == [
            f"552 5.6.0 <{rcpt}> Message has a line over the length limit"
            for rcpt in rcpt_tos
        ]
        assert wire.nothing_more()
    for rcpt in rcpt_tos:
        assert maildir_files(lmtp_server, rcpt) == []


@pytest.mark.parametrize(
    "rcpt_tos",
    [["foo@abc.example"], ["foo@abc.example", "foo@xyz.example"]],
    ids=["staged-in-maildir", "staged-in-state-root"],
)
@pytest.mark.parametrize(
    ("linger", "logged"),
    [(None, "message abandoned (connection closed)"), (0, "connection lost from")],
    ids=["close", "reset"],
)
def test_disconnect_mid_data(
    lmtp_server: LmtpProcess, rcpt_tos: list[str], linger: int | None, logged: str
) -> None:
    """A client gone mid-DATA leaves nothing in new/, tmp/ or the state root's tmp/."""
    host(lmtp_server, "foo@abc.example", "foo@xyz.example")
    folders = [lmtp_server.root.staging]
    for rcpt in rcpt_tos:
        maildir = lmtp_server.maildir(rcpt)
        folders += [maildir / "new", maildir / "tmp"]

    with Wire.greeted(lmtp_server) as wire:
        wire.send(envelope(SENDER, *rcpt_tos) + b"DATA\r\n")
        assert wire.replies(2 + len(rcpt_tos)) == [
            MAIL_OK,
            *map(rcpt_ok, rcpt_tos),
            GO_AHEAD,
        ]
        assert len(stored_files(*folders)) == 1  # the staged body
        wire.send(b"Subject: cut short\r\n\r\nhalf a")
        if linger is not None:
            # SO_LINGER with a zero timeout: close() sends RST, not FIN.
            option = struct.pack("ii", 1, linger)
            wire.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, option)
    wait_until(
        lambda: logged in lmtp_server.log_text() and not stored_files(*folders),
        "the staged body to be removed",
    )


def test_bdat_chunks(lmtp_server: LmtpProcess) -> None:
    """BDAT: octets taken verbatim (no dot unstuffing), CRLF stored as LF."""
    host(lmtp_server, "foo@abc.example", "foo@xyz.example")
    first, last = b"Subject: chunks\r\n\r\n", b".dot line\r\nend\r\n"

    with Wire.greeted(lmtp_server) as wire:
        wire.send(
            envelope(SENDER, "foo@abc.example", "foo@xyz.example")
            + b"BDAT %d\r\n" % len(first)
            + first
            + b"BDAT %d LAST\r\n" % len(last)
            + last
        )
        assert wire.replies(6) == [
            MAIL_OK,
            rcpt_ok("foo@abc.example"),
            rcpt_ok("foo@xyz.example"),
            f"250 2.0.0 {len(first)} octets received",
            saved("foo@abc.example"),
            saved("foo@xyz.example"),
        ]
    (message,) = lmtp_server.messages("foo@abc.example")
    assert message.read_bytes() == RETURN_PATH + b"Subject: chunks\n\n.dot line\nend\n"


# XFORWARD: the MTA's queue id in the log, and retries stored once.


def test_xforward_ident_is_the_queue_id(lmtp_server: LmtpProcess) -> None:
    """XFORWARD IDENT=... starts every log line of the message."""
    host(lmtp_server, "foo@abc.example")

    with Wire.greeted(lmtp_server) as wire:
        wire.send(b"XFORWARD NAME=mx.example ADDR=192.0.2.1 IDENT=4F2A1B\r\n")
        assert wire.reply() == OK
        rcpt_tos = ["nobody@abc.example", "foo@abc.example"]
        refused = {"nobody@abc.example": NO_SUCH_USER.format("nobody@abc.example")}
        assert send_message(wire, rcpt_tos, refused=refused) == [
            saved("foo@abc.example")
        ]

    assert (
        "4F2A1B: to=<nobody@abc.example>, domain=abc.example, user=nobody, "
        "dsn=5.1.1, status=rejected (User unknown)\n"
    ) in lmtp_server.log_text()
    assert [entry["queue"] for entry in deliveries(lmtp_server)] == ["4F2A1B"]


def test_retry_with_same_ident_is_stored_once(lmtp_server: LmtpProcess) -> None:
    """The same queue id and recipient again: 250, but no second file."""
    host(lmtp_server, "foo@abc.example", "bar@abc.example")

    for rcpt_tos in (["foo@abc.example"], ["foo@abc.example", "bar@abc.example"]):
        with Wire.greeted(lmtp_server) as wire:
            wire.send(b"XFORWARD IDENT=7C3D9E\r\n")
            assert wire.reply() == OK
            assert send_message(wire, rcpt_tos) == [saved(rcpt) for rcpt in rcpt_tos]

    assert len(lmtp_server.messages("foo@abc.example")) == 1
    assert len(lmtp_server.messages("bar@abc.example")) == 1
    assert "queue=7C3D9E domain=abc.example user=foo status=duplicate" in (
        lmtp_server.log_text()
    )


# Return-Path always; Delivered-To only where one file serves one recipient.


@pytest.mark.parametrize(
    ("mail_from", "rcpt_tos", "header"),
    [
        (SENDER, ["foo@abc.example"], RETURN_PATH + b"Delivered-To: foo@abc.example\n"),
        (
            "",
            ["foo+news@abc.example"],
            b"Return-Path: <>\nDelivered-To: foo+news@abc.example\n",
        ),
        (SENDER, ["foo@abc.example", "Foo+x@abc.example"], RETURN_PATH),
        (SENDER, ["foo@abc.example", "bar@abc.example"], RETURN_PATH),
    ],
    ids=["one-recipient", "null-sender", "two-recipients-one-mailbox", "two-mailboxes"],
)
def test_trace_headers(
    lmtp_server: LmtpProcess, mail_from: str, rcpt_tos: list[str], header: bytes
) -> None:
    """Return-Path and, for one recipient and one mailbox, Delivered-To."""
    host(lmtp_server, "foo@abc.example", "bar@abc.example")

    with Wire.greeted(lmtp_server) as wire:
        assert send_message(wire, rcpt_tos, mail_from=mail_from) == [
            saved(rcpt) for rcpt in rcpt_tos
        ]

    (message,) = lmtp_server.messages("foo@abc.example")
    assert message.read_bytes() == header + STORED
