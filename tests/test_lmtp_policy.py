"""End to end: quota, per-domain limits and log lines of a real lmtpd."""

from tests.lmtp_process import LmtpProcess
from tests.lmtp_wire import (
    GO_AHEAD,
    MAIL_OK,
    MAILBOX_FULL,
    NO_SUCH_USER,
    OK,
    RETURN_PATH,
    SENDER,
    TOO_BIG,
    Wire,
    deliveries,
    dot_stuffed,
    envelope,
    host,
    maildir_files,
    rcpt_ok,
    saved,
    send_message,
)

# Quota: defer at RCPT or after DATA, bounce after DATA, maildirsize kept.


def test_quota_declared_size_deferred_at_rcpt(lmtp_server: LmtpProcess) -> None:
    """SIZE= over the quota: 452 4.2.2 at RCPT (over_quota=defer, the default)."""
    lmtp_server.add_account("foo@abc.example", quota_bytes=1000)
    host(lmtp_server, "bar@abc.example")

    with Wire.greeted(lmtp_server) as wire:
        wire.send(
            envelope(SENDER, "foo@abc.example", "bar@abc.example", params="SIZE=2000")
        )
        assert wire.replies(3) == [
            MAIL_OK,
            MAILBOX_FULL.format("foo@abc.example"),
            rcpt_ok("bar@abc.example"),
        ]


def test_quota_full_mailbox_deferred_at_rcpt(lmtp_server: LmtpProcess) -> None:
    """A mailbox already over its quota: 452 4.2.2 at RCPT, even without SIZE=."""
    lmtp_server.add_account("foo@abc.example", quota_bytes=1000)
    old = lmtp_server.maildir("foo@abc.example") / "cur" / "1700000000.M1P1Q1.h,S=1500"
    old.write_bytes(b"x" * 1500)
    lmtp_server.start()

    with Wire.greeted(lmtp_server) as wire:
        wire.send(envelope(SENDER, "foo@abc.example"))
        assert wire.replies(2) == [MAIL_OK, MAILBOX_FULL.format("foo@abc.example")]


def test_quota_exceeded_at_delivery_deferred(lmtp_server: LmtpProcess) -> None:
    """No SIZE=, body over the quota: 452 4.2.2 after DATA, nothing stored."""
    host(lmtp_server, "foo@abc.example", quota_bytes=1000)

    with Wire.greeted(lmtp_server) as wire:
        body = b"Subject: big\r\n\r\n" + (b"z" * 70 + b"\r\n") * 20
        assert send_message(wire, ["foo@abc.example"], body) == [
            MAILBOX_FULL.format("foo@abc.example")
        ]
    assert maildir_files(lmtp_server, "foo@abc.example") == []
    assert [entry["status"] for entry in deliveries(lmtp_server)] == ["deferred"]


def test_quota_bounce_after_data(lmtp_server: LmtpProcess) -> None:
    """over_quota=bounce: RCPT accepted, 552 5.2.2 after DATA; others delivered."""
    lmtp_server.add_account("foo@abc.example", quota_bytes=1000)
    lmtp_server.add_account("bar@abc.example")
    lmtp_server.admin.change_settings("abc.example", {"over_quota": "bounce"})
    lmtp_server.start()
    rcpt_tos = ["foo@abc.example", "bar@abc.example"]

    with Wire.greeted(lmtp_server) as wire:
        wire.send(envelope(SENDER, *rcpt_tos, params="SIZE=2000") + b"DATA\r\n")
        assert wire.replies(4) == [MAIL_OK, *map(rcpt_ok, rcpt_tos), GO_AHEAD]
        wire.send(dot_stuffed(b"Subject: big\r\n\r\n" + (b"z" * 70 + b"\r\n") * 20))
        assert wire.replies(2) == [
            "552 5.2.2 <foo@abc.example> Mailbox full",
            saved("bar@abc.example"),
        ]
    assert maildir_files(lmtp_server, "foo@abc.example") == []
    assert len(lmtp_server.messages("bar@abc.example")) == 1
    statuses = [
        (entry["user"], entry["dsn"], entry["status"])
        for entry in deliveries(lmtp_server)
    ]
    assert statuses == [("foo", "5.2.2", "bounced"), ("bar", "2.0.0", "sent")]


def test_maildirsize_updated(lmtp_server: LmtpProcess) -> None:
    """Each delivery to a mailbox with a quota adds its size to maildirsize."""
    host(lmtp_server, "foo@abc.example", quota_bytes=10000)

    with Wire.greeted(lmtp_server) as wire:
        for _ in range(2):
            assert send_message(wire, ["foo@abc.example"]) == [saved("foo@abc.example")]

    sizes = [path.stat().st_size for path in lmtp_server.messages("foo@abc.example")]
    maildirsize = lmtp_server.maildir("foo@abc.example") / "maildirsize"
    changes = "".join(f"{size} 1\n" for size in sizes)
    assert maildirsize.read_text() == f"10000S\n0 0\n{changes}"


# Per-domain limits from the domain's settings.


def test_domain_max_message_size(lmtp_server: LmtpProcess) -> None:
    """A domain's max_message_size refuses a larger SIZE= at RCPT with 552 5.3.4."""
    lmtp_server.add_account("foo@abc.example")
    lmtp_server.admin.change_settings("abc.example", {"max_message_size": 1000})
    host(lmtp_server, "foo@xyz.example")

    with Wire.greeted(lmtp_server) as wire:
        wire.send(
            envelope(SENDER, "foo@abc.example", "foo@xyz.example", params="SIZE=2000")
        )
        assert wire.replies(3) == [
            MAIL_OK,
            TOO_BIG.format("foo@abc.example"),
            rcpt_ok("foo@xyz.example"),
        ]


def test_domain_max_recipients(lmtp_server: LmtpProcess) -> None:
    """A domain's max_recipients: the next recipient of it gets 452 4.5.3."""
    for local in ("foo", "bar", "baz"):
        lmtp_server.add_account(f"{local}@abc.example")
    lmtp_server.admin.change_settings("abc.example", {"max_recipients": 2})
    host(lmtp_server, "foo@xyz.example")
    rcpt_tos = ["foo@abc.example", "bar@abc.example", "baz@abc.example"]

    with Wire.greeted(lmtp_server) as wire:
        wire.send(envelope(SENDER, *rcpt_tos, "foo@xyz.example"))
        assert wire.replies(5) == [
            MAIL_OK,
            rcpt_ok("foo@abc.example"),
            rcpt_ok("bar@abc.example"),
            "452 4.5.3 <baz@abc.example> Too many recipients",
            rcpt_ok("foo@xyz.example"),
        ]


# Log lines: one per recipient, also in each domain's own log.


def test_log_line_per_recipient(lmtp_server: LmtpProcess) -> None:
    """Every recipient gets one line: queue id, domain, user, size, delay, dsn."""
    lmtp_server.add_account("foo@abc.example", quota_bytes=100)
    host(lmtp_server, "bar@abc.example", "foo@xyz.example")
    rcpt_tos = [
        "foo@abc.example",
        "nobody@xyz.example",
        "bar@abc.example",
        "foo@xyz.example",
    ]
    refused = {"nobody@xyz.example": NO_SUCH_USER.format("nobody@xyz.example")}

    with Wire.greeted(lmtp_server) as wire:
        wire.send(b"XFORWARD IDENT=5E6F70\r\n")
        assert wire.reply() == OK
        body = b"Subject: log\r\n\r\n" + b"w" * 200 + b"\r\n"
        assert send_message(wire, rcpt_tos, body, refused) == [
            MAILBOX_FULL.format("foo@abc.example"),
            saved("bar@abc.example"),
            saved("foo@xyz.example"),
        ]

    size = str(len(RETURN_PATH) + len(body) - 3)
    assert deliveries(lmtp_server) == [
        entry("foo", "abc.example", size, "4.2.2", "deferred", "Mailbox full"),
        entry("bar", "abc.example", size, "2.0.0", "sent", "Saved"),
        entry("foo", "xyz.example", size, "2.0.0", "sent", "Saved"),
    ]
    for domain in ("abc.example", "xyz.example"):
        own = lmtp_server.root.tree(domain).logs / "mail.log"
        server_lines = [
            line
            for line in lmtp_server.log_text().splitlines()
            if f", domain={domain}, " in line
        ]
        assert own.read_text().splitlines() == server_lines
        assert len(server_lines) == 2
    assert (
        "5E6F70: to=<nobody@xyz.example>, domain=xyz.example, user=nobody, "
        "dsn=5.1.1, status=rejected (User unknown)\n"
    ) in lmtp_server.log_text()


def entry(
    user: str, domain: str, size: str, dsn: str, status: str, text: str
) -> dict[str, str]:
    """The fields of one delivery line of queue 5E6F70."""
    return {
        "queue": "5E6F70",
        "to": f"{user}@{domain}",
        "domain": domain,
        "user": user,
        "size": size,
        "dsn": dsn,
        "status": status,
        "text": text,
    }
