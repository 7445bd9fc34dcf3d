"""One real lmtpd over TCP and a unix socket: the basic path works."""

import asyncio
import smtplib
from pathlib import Path

import pytest

from mdcore.kernelsync import KernelSync
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


@pytest.mark.parametrize("fsync", ["auto", "threads"])
def test_both_ways_of_fsync_deliver(lmtp_server: LmtpProcess, fsync: str) -> None:
    """lmtp.fsync auto (native AIO here) and threads: one mailbox, then three."""
    lmtp_server.lmtp["fsync"] = fsync
    lmtp_server.write_config()
    addresses = ["foo@abc.example", "bar@abc.example", "foo@xyz.example"]
    for address in addresses:
        lmtp_server.add_account(address)
    lmtp_server.start()

    client = smtplib.LMTP(str(lmtp_server.socket_path))
    try:
        client.ehlo("test.example")
        client.sendmail("a@outside.example", addresses[:1], b"Subject: one\r\n\r\n")
        client.sendmail("a@outside.example", addresses, b"Subject: all\r\n\r\n")
    finally:
        client.quit()

    assert [len(lmtp_server.messages(address)) for address in addresses] == [2, 1, 1]
    assert lmtp_server.stop() == 0
    aio = fsync == "auto" and kernel_has_aio_fsync(lmtp_server.folder)
    way = "by io_submit(2)" if aio else "in worker threads"
    assert f"lmtpd: fsync {way}" in lmtp_server.log_text()


def kernel_has_aio_fsync(folder: Path) -> bool:
    """Whether this machine fsyncs through native AIO (kernel 4.18 and later)."""

    async def probe() -> bool:
        sync = await KernelSync.open(folder)
        if sync is not None:
            sync.close()
        return sync is not None

    return asyncio.run(probe())
