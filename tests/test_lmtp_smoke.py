"""One real lmtpd over TCP and a unix socket: the basic path works."""

import smtplib

from tests.lmtp_process import LmtpProcess


def test_smtplib_lmtp_delivers_per_domain(lmtp_server: LmtpProcess) -> None:
    """foo@abc and foo@xyz are two mailboxes; each recipient gets its own reply."""
    lmtp_server.add_account("foo@abc.example")
    lmtp_server.add_account("foo@xyz.example")
    lmtp_server.start()

    client = smtplib.LMTP(str(lmtp_server.socket_path))
    try:
        client.ehlo("test.example")
        refused = client.sendmail(
            "sender@outside.example",
            ["foo@abc.example", "nobody@abc.example", "foo@xyz.example"],
            b"Subject: hello\r\n\r\nbody\r\n",
        )
    finally:
        client.quit()

    assert refused == {
        "nobody@abc.example": (550, b"5.1.1 <nobody@abc.example> User unknown")
    }
    for address in ("foo@abc.example", "foo@xyz.example"):
        (message,) = lmtp_server.messages(address)
        assert message.read_bytes() == (
            b"Return-Path: <sender@outside.example>\nSubject: hello\n\nbody\n"
        )
    assert lmtp_server.stop() == 0
