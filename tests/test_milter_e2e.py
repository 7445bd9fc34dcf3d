"""End to end: real Postfix and sendmail ask our milter and deliver to lmtpd."""

import smtplib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.lmtp_process import LmtpProcess
from tests.milter_process import MilterProcess
from tests.mta import PostfixInstance, SendmailInstance, wait_until

SENDER = "sender@x.test"
DOMAINS = [{"domain": "abc.example", "addresses": ["127.0.0.2"]}]
OUR_HEADER = b"X-Mdmail-Domain: abc.example (rule: server-address 127.0.0.2)"
UNKNOWN = (550, b"5.1.1 User unknown")
DELIVERY_TIMEOUT = 15.0


@dataclass
class Stack:
    """Our two servers on one state root: lmtpd delivers, the milter decides."""

    lmtp: LmtpProcess
    milter: MilterProcess

    def route(self, mta: PostfixInstance) -> None:
        """Deliver the hosted domains to lmtpd and ask the milter at SMTP time."""
        for domain in ("abc.example", "xyz.example"):
            mta.transport[domain] = f"lmtp:inet:127.0.0.1:{self.lmtp.port}"
        mta.smtpd_milters = self.milter.postfix_spec


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """lmtpd and the milter, running for the whole module; alice and bob exist."""
    folder = tmp_path_factory.mktemp("milter-e2e")
    lmtp = LmtpProcess(folder / "lmtpd")
    lmtp.add_account("alice@abc.example")
    lmtp.add_account("bob@xyz.example")
    milter = MilterProcess(folder / "milter", lmtp.root, DOMAINS)
    lmtp.start()
    try:
        milter.start()
        yield Stack(lmtp, milter)
    finally:
        milter.stop()
        lmtp.stop()
        lmtp.close_notify()


def message(subject: str, *extra: str) -> bytes:
    """A small message with a subject that tells the tests' messages apart."""
    fields = [f"From: {SENDER}", f"Subject: {subject}", *extra]
    return ("\r\n".join(fields) + "\r\n\r\nHello.\r\n").encode()


def delivered(lmtp: LmtpProcess, address: str, subject: str) -> bytes:
    """The one message with `subject` in an account's new/ (waits for it)."""
    found: list[bytes] = []

    def arrived() -> bool:
        found[:] = [
            data
            for path in lmtp.messages(address)
            if f"Subject: {subject}\n".encode() in (data := path.read_bytes())
        ]
        return bool(found)

    wait_until(arrived, DELIVERY_TIMEOUT, f"{subject!r} in {address}")
    assert len(found) == 1
    return found[0]


def test_postfix_refuses_unknown_user_at_rcpt(
    stack: Stack, postfix: PostfixInstance
) -> None:
    """Postfix: nobody@ gets the milter's 550 5.1.1 at RCPT; alice@ is delivered."""
    stack.route(postfix)
    postfix.start()

    refused = postfix.send(
        SENDER, ["alice@abc.example", "nobody@abc.example"], message("unknown")
    )

    assert refused == {"nobody@abc.example": UNKNOWN}
    postfix.wait_for_log(
        r"\]: [0-9A-F]+: milter-reject: RCPT from localhost\[127\.0\.0\.1\]: "
        r"550 5\.1\.1 User unknown; from=<sender@x\.test> to=<nobody@abc\.example> "
        r"proto=ESMTP helo=<client\.test>$"
    )
    assert b"\nX-Mdmail-Domain: none (rule: none, server address 127.0.0.1)\n" in (
        delivered(stack.lmtp, "alice@abc.example", "unknown")
    )


def test_postfix_bare_recipient_qualified_into_the_address_domain(
    stack: Stack, postfix: PostfixInstance
) -> None:
    """RCPT TO:<alice> on abc.example's 127.0.0.2 ends up in alice@abc.example."""
    stack.route(postfix)
    # Postfix qualifies a bare address with $myorigin before its relay check, so
    # myorigin must be a hosted domain for <alice> to reach the milter at all;
    # xyz.example here, which the milter then overrides with abc.example.
    postfix.extra_main_cf["myorigin"] = "xyz.example"
    port = postfix.add_listener("127.0.0.2")
    postfix.start()

    forged = "X-Mdmail-Domain: xyz.example (rule: forged)"
    refused = postfix.send(
        SENDER, ["alice"], message("bare", forged), address="127.0.0.2", port=port
    )

    assert refused == {}
    postfix.wait_for_log(r": to=<alice@abc\.example>, relay=.* status=sent ")
    data = delivered(stack.lmtp, "alice@abc.example", "bare")
    assert data.startswith(b"Return-Path: <sender@x.test>\nDelivered-To: alice@abc")
    assert b"\nX-Mdmail-Domain: " in data
    assert f"\n{forged}\n".encode() not in data
    assert data.count(b"X-Mdmail-Domain") == 1
    assert f"\n{OUR_HEADER.decode()}\n".encode() in data
    assert "alice@xyz.example" not in postfix.log_text()


def test_postfix_answers_tempfail_while_the_milter_is_down(
    stack: Stack, postfix: PostfixInstance, tmp_path: Path
) -> None:
    """Milter killed: 451 4.7.1, nothing queued; milter back: mail flows again."""
    milter = MilterProcess(tmp_path / "milter", stack.lmtp.root, DOMAINS)
    # Both ports were free when picked, neither bound yet: they may be the same.
    while milter.port == postfix.smtp_port:
        milter = MilterProcess(tmp_path / "milter", stack.lmtp.root, DOMAINS)
    milter.start()
    stack.route(postfix)
    postfix.smtpd_milters = milter.postfix_spec
    postfix.start()
    assert postfix.send(SENDER, ["alice@abc.example"], message("before")) == {}
    delivered(stack.lmtp, "alice@abc.example", "before")
    postfix.wait_for_log(r"qmgr\[\d+\]: [0-9A-F]+: removed$")

    milter.kill()
    with smtplib.SMTP("127.0.0.1", postfix.smtp_port, "client.test") as smtp:
        assert smtp.ehlo()[0] == 250
        assert smtp.mail(SENDER) == (
            451,
            b"4.7.1 Service unavailable - try again later",
        )
    assert postfix.queue_ids() == []

    milter.start()
    assert postfix.send(SENDER, ["alice@abc.example"], message("after")) == {}
    delivered(stack.lmtp, "alice@abc.example", "after")

    # SIGTERM, as systemd stops it: libmilter winds down and the process exits 0.
    assert milter.stop() == 0
    assert milter.log_text().splitlines()[-1].endswith("]: milter: stopped")


def test_sendmail_refuses_unknown_user_at_rcpt(
    stack: Stack, sendmail: SendmailInstance
) -> None:
    """sendmail (INPUT_MAIL_FILTER): nobody@ gets 550 5.1.1; alice@ is delivered."""
    sendmail.mailertable["abc.example"] = sendmail.lmtp_inet(stack.lmtp.port)
    sendmail.input_mail_filter = stack.milter.spec
    sendmail.start()

    refused = sendmail.send(
        SENDER, ["alice@abc.example", "nobody@abc.example"], message("sendmail")
    )

    # sendmail puts the address before the milter's text, as in its own replies.
    reply = (550, b"5.1.1 <nobody@abc.example>... User unknown")
    assert refused == {"nobody@abc.example": reply}
    data = delivered(stack.lmtp, "alice@abc.example", "sendmail")
    assert b"\nX-Mdmail-Domain: none (rule: none, server address 127.0.0.1)\n" in data


def test_serve_milter_refuses_a_bad_socket(tmp_path: Path) -> None:
    """`serve milter --socket 127.0.0.1:8891` (Postfix's form): one line, exit 1."""
    command = [sys.executable, "-m", "mdmail", "--state-root", str(tmp_path)]
    done = subprocess.run(
        [*command, "serve", "milter", "--socket", "127.0.0.1:8891"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        "mdmail: error: milter socket '127.0.0.1:8891' is not inet:PORT@ADDRESS, "
        "inet6:PORT@ADDRESS or unix:/path\n"
    )
