"""The milter's policy without pymilter: each SMTP-time rule, table-driven."""

from typing import Any

import pytest
from mdmilter import policy
from mdmilter.policy import (
    Check,
    Connection,
    DomainRule,
    Envelope,
    Policy,
    Recipient,
    Verdict,
)

from mdcore.admin import Admin
from mdcore.config import DomainBinding
from mdcore.domainchoice import DomainRules
from mdcore.namespace import Registry
from tests.conftest import SECRET_HASH

# abc.example owns 127.0.0.2 and takes mail for other domains there; closed.example
# owns 127.0.0.3 and does not; xyz.example has no address of its own.
BINDINGS = (
    DomainBinding(domain="abc.example", addresses=("127.0.0.2",)),
    DomainBinding(domain="closed.example", addresses=("127.0.0.3",)),
    DomainBinding(domain="xyz.example"),
)
ABC_LIMITS = {
    "max_message_size": 1000,
    "max_recipients": 2,
    "refused_senders": ["spam@bad.test", "@junk.test"],
}


def _account(admin: Admin, domain: str, name: str, **options: Any) -> None:
    admin.add_account(domain, name, SECRET_HASH, hashed=True, **options)


def _fill(admin: Admin, domain: str, name: str, size: int) -> None:
    """Put one message of `size` octets (S= in its name) into an account's cur/."""
    cur = admin.tree(domain).maildir(name) / "cur"
    (cur / f"1700000000.M1P1Q1.host,S={size}").write_bytes(b"x" * size)


@pytest.fixture
def rules(admin: Admin, registry: Registry) -> Policy:
    """Three domains, an alias domain, accounts, aliases and full mailboxes."""
    admin.add_domain("abc.example", ABC_LIMITS)
    admin.add_domain("closed.example", {"accept_other_domains": False})
    admin.add_domain("xyz.example", {"over_quota": "bounce"})
    admin.add_domain_alias("alias.example", "abc.example")
    for name in ("alice", "full", "off"):
        _account(
            admin, "abc.example", name, quota_bytes=100 if name == "full" else None
        )
    admin.update_account("abc.example", "off", state="disabled")
    _account(admin, "closed.example", "carol")
    _account(admin, "xyz.example", "fullb", quota_bytes=100)
    admin.add_alias("xyz.example", "team", ["alice@abc.example"])
    admin.add_alias("xyz.example", "out", ["someone@elsewhere.test"])
    _fill(admin, "abc.example", "full", 200)
    _fill(admin, "xyz.example", "fullb", 200)
    return Policy(registry, DomainRules(BINDINGS))


# check_connect: the domain of the server address, else of the listener's name.


@pytest.mark.parametrize(
    ("server_address", "listener", "domain", "rule", "header"),
    [
        (
            "127.0.0.2",
            "smtpd",
            "abc.example",
            DomainRule.SERVER_ADDRESS,
            "abc.example (rule: server-address 127.0.0.2)",
        ),
        (
            "::ffff:127.0.0.3",
            "",
            "closed.example",
            DomainRule.SERVER_ADDRESS,
            "closed.example (rule: server-address ::ffff:127.0.0.3)",
        ),
        (
            "127.0.0.1",
            "XYZ.example",
            "xyz.example",
            DomainRule.LISTENER_NAME,
            "xyz.example (rule: listener-name XYZ.example)",
        ),
        (
            "127.0.0.1",
            "mx.eco.test",
            None,
            DomainRule.NONE,
            "none (rule: none, server address 127.0.0.1)",
        ),
        ("", "", None, DomainRule.NONE, "none (rule: none, server address unknown)"),
    ],
)
def test_check_connect(
    rules: Policy,
    server_address: str,
    listener: str,
    domain: str | None,
    rule: DomainRule,
    header: str,
) -> None:
    """The connection's domain, the rule that chose it and the header recording it."""
    connection = rules.check_connect(server_address, listener)
    assert (connection.domain, connection.rule) == (domain, rule)
    assert connection.header_value() == header


def test_check_connect_works_each_pair_out_once(
    rules: Policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every connection through one listener: the rules are asked the first time."""
    asked: list[str] = []
    ask = rules.rules.domain_of_server_address

    def counted(address: str) -> str | None:
        asked.append(address)
        return ask(address)

    monkeypatch.setattr(rules.rules, "domain_of_server_address", counted)
    first = rules.check_connect("127.0.0.2", "smtpd")
    again = rules.check_connect("127.0.0.2", "smtpd")
    other = rules.check_connect("127.0.0.3", "smtpd")
    ours = Connection("abc.example", DomainRule.SERVER_ADDRESS, "127.0.0.2", "smtpd")
    assert (first, again, other.domain) == (ours, first, "closed.example")
    assert again is first
    assert asked == ["127.0.0.2", "127.0.0.3"]


# check_mail: the connection domain's refused senders and size limit.

ABC = Connection("abc.example", DomainRule.SERVER_ADDRESS, "127.0.0.2")
CLOSED = Connection("closed.example", DomainRule.SERVER_ADDRESS, "127.0.0.3")
NONE = Connection(None, DomainRule.NONE, "127.0.0.1")


@pytest.mark.parametrize(
    ("connection", "mail_from", "size", "verdict", "reply"),
    [
        (NONE, "spam@bad.test", 10**9, Verdict.PASS, None),
        (ABC, "someone@x.test", 999, Verdict.ACCEPT, None),
        (ABC, "", None, Verdict.ACCEPT, None),
        (
            ABC,
            "Spam@Bad.test",
            None,
            Verdict.REJECT,
            "550 5.7.1 Mail from this sender is refused by abc.example",
        ),
        (
            ABC,
            "anyone@junk.test",
            None,
            Verdict.REJECT,
            "550 5.7.1 Mail from this sender is refused by abc.example",
        ),
        (
            ABC,
            "someone@x.test",
            1001,
            Verdict.REJECT,
            "552 5.3.4 Message exceeds the maximum size of abc.example",
        ),
        (CLOSED, "spam@bad.test", 10**9, Verdict.ACCEPT, None),
    ],
)
def test_check_mail(
    rules: Policy,
    connection: Connection,
    mail_from: str,
    size: int | None,
    verdict: Verdict,
    reply: str | None,
) -> None:
    """MAIL FROM: refused senders and SIZE= against the connection's domain."""
    decision = rules.check_mail(mail_from, size, connection)
    assert decision.verdict is verdict
    assert (str(decision.reply) if decision.reply else None) == reply


# check_rcpt: one row per rule.

UNKNOWN = "550 5.1.1 User unknown"
OTHER_ABC = "550 5.7.1 Relay access denied: this server address takes mail for "
CLOSED_ONLY = OTHER_ABC + "closed.example only"


@pytest.mark.parametrize(
    ("connection", "mail_from", "size", "rcpt", "verdict", "check", "reply", "to"),
    [
        # Known recipients: accounts, details, aliases (to outside too), alias domains.
        (NONE, "s@x.test", None, "<alice@abc.example>", Verdict.ACCEPT,
         Check.KNOWN_RECIPIENT, None, "alice@abc.example"),
        (NONE, "s@x.test", None, "<Alice+news@ABC.example>", Verdict.ACCEPT,
         Check.KNOWN_RECIPIENT, None, "Alice+news@ABC.example"),
        (NONE, "s@x.test", None, "<team@xyz.example>", Verdict.ACCEPT,
         Check.KNOWN_RECIPIENT, None, "team@xyz.example"),
        (NONE, "s@x.test", None, "<out@xyz.example>", Verdict.ACCEPT,
         Check.KNOWN_RECIPIENT, None, "out@xyz.example"),
        (NONE, "s@x.test", None, "<alice@alias.example>", Verdict.ACCEPT,
         Check.KNOWN_RECIPIENT, None, "alice@alias.example"),
        # Unknown users and addresses no hosted domain could hold.
        (NONE, "s@x.test", None, "<nobody@abc.example>", Verdict.REJECT,
         Check.UNKNOWN_USER, UNKNOWN, None),
        (NONE, "s@x.test", None, "<a/b@abc.example>", Verdict.REJECT,
         Check.BAD_ADDRESS, "553 5.1.3 Bad recipient address syntax", None),
        # Bare recipients are qualified into the connection's domain.
        (ABC, "s@x.test", None, "<alice>", Verdict.ACCEPT,
         Check.KNOWN_RECIPIENT, None, "alice@abc.example"),
        (ABC, "s@x.test", None, " alice ", Verdict.ACCEPT,
         Check.KNOWN_RECIPIENT, None, "alice@abc.example"),
        (ABC, "s@x.test", None, "<nobody>", Verdict.REJECT,
         Check.UNKNOWN_USER, UNKNOWN, None),
        (NONE, "s@x.test", None, "<alice>", Verdict.PASS,
         Check.UNQUALIFIED, None, None),
        # Other domains: left to the MTA, unless the domain's own address refuses them.
        (NONE, "s@x.test", None, "<x@elsewhere.test>", Verdict.PASS,
         Check.NOT_HOSTED, None, None),
        (NONE, "s@x.test", None, "<x@nodot>", Verdict.PASS,
         Check.NOT_HOSTED, None, None),
        (ABC, "s@x.test", None, "<x@elsewhere.test>", Verdict.PASS,
         Check.NOT_HOSTED, None, None),
        (ABC, "s@x.test", None, "<carol@closed.example>", Verdict.ACCEPT,
         Check.KNOWN_RECIPIENT, None, "carol@closed.example"),
        (CLOSED, "s@x.test", None, "<x@elsewhere.test>", Verdict.REJECT,
         Check.OTHER_DOMAIN, CLOSED_ONLY, None),
        (CLOSED, "s@x.test", None, "<alice@abc.example>", Verdict.REJECT,
         Check.OTHER_DOMAIN, CLOSED_ONLY, None),
        (CLOSED, "s@x.test", None, "<carol>", Verdict.ACCEPT,
         Check.KNOWN_RECIPIENT, None, "carol@closed.example"),
        # The recipient domain's rules.
        (NONE, "s@x.test", None, "<off@abc.example>", Verdict.REJECT,
         Check.DISABLED, "550 5.2.1 Mailbox disabled", None),
        (NONE, "spam@bad.test", None, "<alice@abc.example>", Verdict.REJECT,
         Check.REFUSED_SENDER,
         "550 5.7.1 Mail from this sender is refused by abc.example", None),
        (NONE, "a@JUNK.test", None, "<alice@abc.example>", Verdict.REJECT,
         Check.REFUSED_SENDER,
         "550 5.7.1 Mail from this sender is refused by abc.example", None),
        (NONE, "spam@bad.test", None, "<carol@closed.example>", Verdict.ACCEPT,
         Check.KNOWN_RECIPIENT, None, "carol@closed.example"),
        (NONE, "s@x.test", 1001, "<alice@abc.example>", Verdict.REJECT,
         Check.MESSAGE_SIZE,
         "552 5.3.4 Message exceeds the maximum size of abc.example", None),
        (NONE, "s@x.test", 10**9, "<carol@closed.example>", Verdict.ACCEPT,
         Check.KNOWN_RECIPIENT, None, "carol@closed.example"),
        # Quota: deferred by default, bounced where the domain says so.
        (NONE, "s@x.test", None, "<full@abc.example>", Verdict.TEMPFAIL,
         Check.QUOTA, "452 4.2.2 Mailbox full, try again later", None),
        (NONE, "s@x.test", None, "<fullb@xyz.example>", Verdict.REJECT,
         Check.QUOTA, "552 5.2.2 Mailbox full", None),
        (NONE, "s@x.test", None, "<alice@abc.example>", Verdict.ACCEPT,
         Check.KNOWN_RECIPIENT, None, "alice@abc.example"),
    ],
)  # fmt: skip
def test_check_rcpt(
    rules: Policy,
    connection: Connection,
    mail_from: str,
    size: int | None,
    rcpt: str,
    verdict: Verdict,
    check: Check,
    reply: str | None,
    to: str | None,
) -> None:
    """RCPT TO: the decision, its rule, the whole reply and the accepted address."""
    envelope = Envelope(mail_from, size)
    decision = rules.check_rcpt(rcpt, connection, envelope)
    assert (decision.verdict, decision.check) == (verdict, check)
    assert (str(decision.reply) if decision.reply else None) == reply
    recipient = decision.recipient
    assert (recipient.address if recipient else None) == to


def test_rcpt_over_the_domains_max_recipients(rules: Policy) -> None:
    """The third abc.example recipient gets 452 4.5.3; other domains still pass."""
    envelope = Envelope("s@x.test")
    for rcpt in ("<alice@abc.example>", "<alice+2@abc.example>"):
        decision = rules.check_rcpt(rcpt, NONE, envelope)
        assert decision.recipient is not None
        envelope = envelope.adding(decision.recipient)

    third = rules.check_rcpt("<alice+3@abc.example>", NONE, envelope)
    assert (third.verdict, str(third.reply)) == (
        Verdict.TEMPFAIL,
        "452 4.5.3 Too many recipients for abc.example",
    )
    other = rules.check_rcpt("<carol@closed.example>", NONE, envelope)
    assert other.verdict is Verdict.ACCEPT


def test_rcpt_unreadable_domain_is_a_temporary_failure(
    rules: Policy, admin: Admin
) -> None:
    """A domain whose settings cannot be read: 451 4.3.0, never "unknown user"."""
    tree = admin.add_domain("broken.example")
    tree.settings.write_text("max_recipients: -1\n")
    decision = rules.check_rcpt("<a@broken.example>", NONE, Envelope("s@x.test"))
    assert (decision.verdict, str(decision.reply)) == (
        Verdict.TEMPFAIL,
        "451 4.3.0 Local error in processing, try again later",
    )


def test_rcpt_unreadable_quota_is_a_temporary_failure(
    rules: Policy, admin: Admin
) -> None:
    """A Maildir whose quota cannot be read (a file in its place): 451 4.3.0."""
    maildir = admin.tree("abc.example").maildir("full")
    for name in ("new", "cur", "tmp"):
        for path in (maildir / name).iterdir():
            path.unlink()
        (maildir / name).rmdir()
    (maildir / "maildirsize").mkdir()
    decision = rules.check_rcpt("<full@abc.example>", NONE, Envelope("s@x.test"))
    assert (decision.verdict, decision.check) == (Verdict.TEMPFAIL, Check.UNAVAILABLE)


# check_eom: the real size against every domain involved.


@pytest.mark.parametrize(
    ("connection", "domains", "size", "verdict", "reply"),
    [
        (NONE, ["abc.example"], 1000, Verdict.ACCEPT, None),
        (
            NONE,
            ["xyz.example", "abc.example"],
            1001,
            Verdict.REJECT,
            "552 5.3.4 Message exceeds the maximum size of abc.example",
        ),
        (
            ABC,
            ["closed.example"],
            5000,
            Verdict.REJECT,
            "552 5.3.4 Message exceeds the maximum size of abc.example",
        ),
        (CLOSED, ["xyz.example"], 10**8, Verdict.ACCEPT, None),
        (NONE, [], 10**8, Verdict.ACCEPT, None),
    ],
)
def test_check_eom(
    rules: Policy,
    connection: Connection,
    domains: list[str],
    size: int,
    verdict: Verdict,
    reply: str | None,
) -> None:
    """End of message: the real size against the connection's and recipients' limits."""
    recipients = tuple(Recipient(f"<u@{d}>", f"u@{d}", d) for d in domains)
    decision = rules.check_eom(size, connection, Envelope("s@x.test", None, recipients))
    assert decision.verdict is verdict
    assert (str(decision.reply) if decision.reply else None) == reply


# Small helpers and the reply table.


def test_envelope_rewrites_only_bare_recipients() -> None:
    """Only recipients given without a domain are rewritten at the end."""
    envelope = Envelope("s@x.test").adding(
        Recipient("<alice>", "alice@abc.example", "abc.example")
    )
    envelope = envelope.adding(
        Recipient("<bob@abc.example>", "bob@abc.example", "abc.example")
    )
    envelope = envelope.adding(Recipient("carol", "carol@abc.example", "abc.example"))
    assert envelope.rewrites() == [
        ("<alice>", "alice@abc.example"),
        ("carol", "carol@abc.example"),
    ]
    assert envelope.count_for("abc.example") == 3


@pytest.mark.parametrize(
    ("params", "size"),
    [
        (("SIZE=1234",), 1234),
        (("BODY=8BITMIME", "size=77"), 77),
        (("SIZE=12x",), None),
        (("SIZE",), None),
        ((), None),
    ],
)
def test_declared_size(params: tuple[str, ...], size: int | None) -> None:
    """SIZE= of MAIL FROM (RFC 1870), case-insensitive; a bad value is no size."""
    assert policy.declared_size(params) == size


@pytest.mark.parametrize(
    ("given", "address"),
    [("<a@b.test>", "a@b.test"), (" <a> ", "a"), ("a@b.test", "a@b.test"), ("<>", "")],
)
def test_unbracket(given: str, address: str) -> None:
    """One pair of angle brackets and surrounding blanks are removed."""
    assert policy.unbracket(given) == address


def test_every_reply_has_a_matching_enhanced_code() -> None:
    """Each reply: 4xx or 5xx, an RFC 3463 code of the same class, no '%'."""
    replies = [v for v in vars(policy).values() if isinstance(v, policy.Reply)]
    assert len(replies) >= 10
    for reply in replies:
        assert reply.code // 100 in (4, 5), reply
        assert reply.enhanced.startswith(f"{reply.code // 100}."), reply
        assert "%" not in reply.text, reply
