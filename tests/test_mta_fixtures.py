"""The Postfix and sendmail fixtures deliver through real MTAs to an LMTP sink."""

import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.lmtp_sink import LmtpSink
from tests.mta import (
    PostfixInstance,
    SendmailInstance,
    free_port,
    group_members,
    wait_until,
)

MESSAGE = b"From: sender@x.test\r\nSubject: fixture check\r\n\r\nHello.\r\n..dot\r\n"
SENDER = "sender@x.test"
BOTH = ["alice@a.test", "bob@a.test"]

SinkFactory = Callable[..., LmtpSink]


@pytest.fixture
def lmtp_sink() -> Iterator[SinkFactory]:
    """Start LMTP sinks on demand (port= or socket_path=); stop them all afterwards."""
    sinks: list[LmtpSink] = []

    def start(**options: object) -> LmtpSink:
        sink = LmtpSink(**options).start()  # type: ignore[arg-type]
        sinks.append(sink)
        return sink

    yield start
    for sink in sinks:
        sink.stop()


def postfix_route(
    postfix: PostfixInstance, lmtp_sink: SinkFactory, kind: str, **options: object
) -> LmtpSink:
    """Start a sink on a unix socket or a TCP port and route a.test to it."""
    if kind == "unix":
        sink = lmtp_sink(socket_path=postfix.socket_path("sink.sock"), **options)
        assert sink.socket_path is not None
        postfix.transport["a.test"] = f"lmtp:unix:{sink.socket_path}"
    else:
        sink = lmtp_sink(port=free_port(), **options)
        postfix.transport["a.test"] = f"lmtp:inet:127.0.0.1:{sink.port}"
    return sink


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_postfix_delivers_two_recipients_in_one_transaction(
    postfix: PostfixInstance, lmtp_sink: SinkFactory, kind: str
) -> None:
    """smtplib -> Postfix -> LMTP sink: both recipients of one message in one go."""
    sink = postfix_route(postfix, lmtp_sink, kind)
    postfix.start()

    assert postfix.send(SENDER, BOTH, MESSAGE) == {}

    [received] = sink.wait_for(1)
    assert (received.lhlo, received.mail_from) == ("mx.eco.test", SENDER)
    assert received.rcpt_tos == tuple(BOTH)
    assert received.data.endswith(b"\r\n\r\nHello.\r\n..dot\r\n")
    sent = postfix.wait_for_log(r"to=<(\S+)>, relay=.*, status=sent", count=2)
    assert sorted(match[1] for match in sent) == BOTH

    # lmtp_send_xforward_command: IDENT carries Postfix's queue id.
    [queued] = postfix.wait_for_log(r"postfix/qmgr\[\d+\]: (\w+): from=<sender@x.test>")
    assert f"IDENT={queued[1]}" in " ".join(received.xforward)


def test_postfix_per_recipient_replies_after_data(
    postfix: PostfixInstance, lmtp_sink: SinkFactory
) -> None:
    """The sink answers alice 250 and bob 452 after DATA: one sent, one deferred."""
    full = {"bob@a.test": "452 4.2.2 <{rcpt}> mailbox full"}
    sink = postfix_route(postfix, lmtp_sink, "unix", replies=full)
    postfix.start()

    assert postfix.send(SENDER, BOTH, MESSAGE) == {}

    sink.wait_for(1)
    postfix.wait_for_log(r"to=<alice@a.test>, .* status=sent \(250 2\.0\.0 ")
    postfix.wait_for_log(
        r"to=<bob@a.test>, .* status=deferred \(host \S+ said: "
        r"452 4\.2\.2 <bob@a.test> mailbox full \(in reply to end of DATA command\)\)"
    )
    assert len(postfix.queue_ids()) == 1
    sink.replies.clear()
    postfix.flush()
    assert sink.wait_for(2)[1].rcpt_tos == ("bob@a.test",)
    postfix.wait_for_log(r"to=<bob@a.test>, .* status=sent \(250 2\.0\.0 ")
    wait_until(lambda: not postfix.queue_ids(), 10, "Postfix's queue to empty")


def test_postfix_reload_picks_up_a_new_transport(
    postfix: PostfixInstance, lmtp_sink: SinkFactory
) -> None:
    """A transport added after start applies after reload(); flush() runs."""
    first = postfix_route(postfix, lmtp_sink, "tcp")
    postfix.start()
    second = lmtp_sink(port=free_port())
    postfix.transport["b.test"] = f"lmtp:inet:127.0.0.1:{second.port}"
    postfix.reload()

    assert postfix.send(SENDER, ["carol@b.test"], MESSAGE) == {}

    [received] = second.wait_for(1)
    assert received.rcpt_tos == ("carol@b.test",)
    assert first.transactions == []


def test_postfix_second_listener_has_its_own_banner(postfix: PostfixInstance) -> None:
    """An extra smtpd on 127.0.0.2 answers with its own hostname and banner."""
    options = {
        "syslog_name": "postfix/dom-b",
        "myhostname": "mx.b.test",
        "smtpd_banner": "$myhostname ESMTP dom-b listener",
    }
    port = postfix.add_listener("127.0.0.2", options=options)
    postfix.start()

    with smtplib.SMTP(local_hostname="client.test", timeout=10) as smtp:
        assert smtp.connect("127.0.0.2", port) == (
            220,
            b"mx.b.test ESMTP dom-b listener",
        )
        assert smtp.ehlo()[1].split(b"\n")[0] == b"mx.b.test"
    with smtplib.SMTP(local_hostname="client.test", timeout=10) as smtp:
        banner = smtp.connect("127.0.0.1", postfix.smtp_port)
        assert banner == (220, b"mx.eco.test ESMTP fixture")
    postfix.wait_for_log(r"postfix/dom-b/smtpd\[\d+\]: connect from ")


def test_postfix_refuses_a_domain_it_does_not_relay(postfix: PostfixInstance) -> None:
    """The test client is outside mynetworks: an unlisted domain gets 554 5.7.1."""
    postfix.start()

    refused = postfix.send(SENDER, ["eve@elsewhere.test"], MESSAGE)

    assert refused == {
        "eve@elsewhere.test": (554, b"5.7.1 <eve@elsewhere.test>: Relay access denied")
    }


def test_postfix_clear_queue_and_clean_stop(postfix: PostfixInstance) -> None:
    """Mail for a dead LMTP port stays queued until clear_queue(); stop() is clean."""
    postfix.transport["a.test"] = f"lmtp:inet:127.0.0.1:{free_port()}"
    postfix.start()
    group = postfix.pgid

    assert postfix.send(SENDER, BOTH, MESSAGE) == {}

    postfix.wait_for_log(r"to=<bob@a.test>, .* status=deferred \(connect to ")
    assert len(postfix.queue_ids()) == 1
    postfix.clear_queue()
    assert postfix.queue_ids() == []
    postfix.stop()
    postfix.stop()
    assert group_members(group) == []


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_sendmail_delivers_through_mailertable(
    sendmail: SendmailInstance, lmtp_sink: SinkFactory, tmp_path: Path, kind: str
) -> None:
    """smtplib -> sendmail -bD -> mailertable -> LMTP sink, both recipients."""
    if kind == "unix":
        sink = lmtp_sink(socket_path=tmp_path / "sink.sock")
        assert sink.socket_path is not None
        sendmail.mailertable["a.test"] = sendmail.lmtp_unix(sink.socket_path)
    else:
        sink = lmtp_sink(port=free_port())
        assert sink.port is not None
        sendmail.mailertable["a.test"] = sendmail.lmtp_inet(sink.port)
    sendmail.start()

    assert sendmail.send(SENDER, BOTH, MESSAGE) == {}

    [received] = sink.wait_for(1)
    assert (received.lhlo, received.mail_from) == ("smx.eco.test", SENDER)
    assert sorted(received.rcpt_tos) == BOTH
    assert received.data.endswith(b"\r\n\r\nHello.\r\n..dot\r\n")
    sendmail.wait_for_traffic(r"<<< 250 2\.0\.0 <bob@a.test> delivered to the sink")
    wait_until(lambda: not sendmail.queue_ids(), 10, "sendmail's queue to empty")


def test_sendmail_defers_then_flush_delivers(
    sendmail: SendmailInstance, lmtp_sink: SinkFactory
) -> None:
    """sendmail queues a recipient refused with 452 after DATA; flush() delivers it."""
    sink = lmtp_sink(port=free_port(), replies={"bob@a.test": "452 4.2.2 full"})
    assert sink.port is not None
    sendmail.mailertable["a.test"] = sendmail.lmtp_inet(sink.port)
    sendmail.start()
    assert "deliverable: mailer lmtpinet" in sendmail.command("-bv", "bob@a.test")

    assert sendmail.send(SENDER, BOTH, MESSAGE) == {}

    sendmail.wait_for_traffic(r"<<< 452 4\.2\.2 full")
    wait_until(lambda: len(sendmail.queue_ids()) == 1, 10, "one queued message")
    sink.replies.clear()
    sendmail.flush()
    assert [t.rcpt_tos for t in sink.wait_for(2)][1] == ("bob@a.test",)
    assert sendmail.queue_ids() == []
    group = sendmail.pgid
    sendmail.stop()
    assert group_members(group) == []


def test_unreachable_milter_tempfails_both_mtas(
    postfix: PostfixInstance, sendmail: SendmailInstance
) -> None:
    """With the milter down, both MTAs answer 4xx (milter_default_action / F=T)."""
    postfix.smtpd_milters = f"inet:127.0.0.1:{free_port()}"
    postfix.start()
    sendmail.input_mail_filter = f"inet:{free_port()}@127.0.0.1"
    sendmail.start()

    with pytest.raises(smtplib.SMTPSenderRefused) as postfix_refusal:
        postfix.send(SENDER, BOTH, MESSAGE)
    with pytest.raises(smtplib.SMTPSenderRefused) as sendmail_refusal:
        sendmail.send(SENDER, BOTH, MESSAGE)

    postfix_reply = (451, b"4.7.1 Service unavailable - try again later")
    assert postfix_refusal.value.args[:2] == postfix_reply
    sendmail_reply = (451, b"4.3.2 Please try again later")
    assert sendmail_refusal.value.args[:2] == sendmail_reply
