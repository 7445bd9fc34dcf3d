"""The pymilter class through pymilter's own fake MTA context (no socket, no MTA)."""

import io
import logging
from collections.abc import Iterator

import Milter
import pytest
from mdmilter.filter import DomainFilter, factory
from mdmilter.policy import Policy
from Milter.testctx import TestCtx as FakeMta  # renamed: pytest would collect it

from mdcore.admin import Admin
from mdcore.config import DomainBinding
from mdcore.domainchoice import DomainRules
from mdcore.namespace import Registry
from tests.conftest import SECRET_HASH

OUR_HEADER = "abc.example (rule: server-address 127.0.0.2)"
MESSAGE = (
    "From: s@x.test\n"
    "X-Mdmail-Domain: forged.example (rule: trust me)\n"
    "Subject: hello\n"
    "x-mdmail-domain: forged again\n"
    "\n"
    "Hello.\n"
)
LOCAL_ERROR = ("451", "4.3.0", "Local error in processing, try again later")


@pytest.fixture
def policy(admin: Admin, registry: Registry) -> Iterator[Policy]:
    """abc.example on 127.0.0.2 with alice; the policy installed as Milter.factory."""
    admin.add_domain("abc.example", {"max_message_size": 2000})
    admin.add_account("abc.example", "alice", SECRET_HASH, hashed=True)
    rules = DomainRules(
        (DomainBinding(domain="abc.example", addresses=("127.0.0.2",)),)
    )
    checks = Policy(registry, rules)
    saved = Milter.factory
    Milter.factory = factory(checks)
    try:
        yield checks
    finally:
        Milter.factory = saved


def connected(server_address: str, queue_id: str = "4A1B2C3D") -> FakeMta:
    """A fake MTA connection from 127.0.0.9 to server_address, MAIL FROM sent."""
    mta = FakeMta()
    mta._setsymval("{daemon_addr}", server_address)
    mta._setsymval("{daemon_name}", "smtpd")
    mta._setsymval("{i}", queue_id)
    assert mta._connect(host="client.test", helo="client.test", ip="127.0.0.9") == (
        Milter.CONTINUE
    )
    assert mta._envfrom("<s@x.test>", "SIZE=100") == Milter.CONTINUE
    return mta


def feed(mta: FakeMta, *rcpt_tos: str, message: str = MESSAGE) -> int:
    """Send a whole transaction (envelope, header, body, end) through the milter."""
    stream = io.BytesIO(message.encode("ascii"))
    rc: int = mta._feedFile(stream, "s@x.test", *rcpt_tos)
    return rc


def test_connect_ties_the_connection_to_the_address_domain(policy: Policy) -> None:
    """{daemon_addr} 127.0.0.2 is abc.example's own address."""
    mta = connected("127.0.0.2")
    milter = mta.getpriv()
    assert isinstance(milter, DomainFilter)
    assert milter.connection.domain == "abc.example"


def test_connect_falls_back_to_if_addr(policy: Policy) -> None:
    """sendmail sends {if_addr}, not {daemon_addr}: read when that one is unset."""
    mta = FakeMta()
    mta._setsymval("{if_addr}", "127.0.0.2")
    assert mta._connect(ip="127.0.0.9") == Milter.CONTINUE
    assert mta.getpriv().connection.domain == "abc.example"


def test_rcpt_unknown_user_rejected(
    policy: Policy, caplog: pytest.LogCaptureFixture
) -> None:
    """RCPT of an unknown user: REJECT with 550 5.1.1, and one log line for it."""
    mta = connected("127.0.0.1")
    with caplog.at_level(logging.INFO, logger="mdmilter"):
        assert mta._envrcpt("<nobody@abc.example>") == Milter.REJECT
    assert mta._reply == ("550", "5.1.1", "User unknown")
    assert caplog.messages == [
        "4A1B2C3D: milter to=<nobody@abc.example>, domain=abc.example, "
        "rule=unknown-user, status=rejected (550 5.1.1 User unknown)"
    ]


def test_rcpt_known_user_accepted(policy: Policy) -> None:
    """RCPT of an account: CONTINUE, no reply set."""
    mta = connected("127.0.0.1")
    assert mta._envrcpt("<alice@abc.example>") == Milter.CONTINUE
    assert mta._reply is None


def test_rcpt_not_hosted_left_to_the_mta(policy: Policy) -> None:
    """RCPT for a domain we do not host: CONTINUE, the MTA's own rules decide."""
    mta = connected("127.0.0.1")
    assert mta._envrcpt("<someone@elsewhere.test>") == Milter.CONTINUE
    assert mta._reply is None


def test_bare_recipient_qualified_at_end_of_message(policy: Policy) -> None:
    """`alice` on abc.example's address: deleted and added back as alice@abc.example."""
    mta = connected("127.0.0.2")
    assert feed(mta, "alice") == Milter.CONTINUE
    assert mta._delrcpt == ["<alice>"]
    assert mta._addrcpt == [("<alice@abc.example>", None)]


def test_qualified_recipient_left_as_given(policy: Policy) -> None:
    """A recipient with its domain is not rewritten."""
    mta = connected("127.0.0.2")
    assert feed(mta, "alice@abc.example") == Milter.CONTINUE
    assert (mta._delrcpt, mta._addrcpt) == ([], [])


def test_forged_domain_header_replaced(
    policy: Policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every forged X-Mdmail-Domain (any case) goes, last first; ours is added once."""
    changes: list[tuple[str, int, str]] = []
    change = DomainFilter.chgheader

    def recorded(self: DomainFilter, name: str, index: int, value: str) -> None:
        changes.append((name, index, value))
        change(self, name, index, value)

    monkeypatch.setattr(DomainFilter, "chgheader", recorded)
    mta = connected("127.0.0.2")
    assert feed(mta, "alice@abc.example") == Milter.CONTINUE
    assert changes == [("X-Mdmail-Domain", 2, ""), ("X-Mdmail-Domain", 1, "")]
    assert mta._headerschanged
    assert mta._msg.get_all("X-Mdmail-Domain") == [OUR_HEADER]
    assert mta._msg["Subject"] == "hello"


def test_header_records_no_domain(policy: Policy) -> None:
    """On an address of no domain the header says so."""
    mta = connected("127.0.0.1")
    assert feed(mta, "alice@abc.example") == Milter.CONTINUE
    assert mta._msg.get_all("X-Mdmail-Domain") == [
        "none (rule: none, server address 127.0.0.1)"
    ]


def test_message_over_the_domains_size_rejected_at_end(policy: Policy) -> None:
    """No SIZE= promise kept: 552 5.3.4 at the end, nothing changed."""
    mta = connected("127.0.0.1")
    big = MESSAGE + "z" * 70 + "\n" + ("z" * 70 + "\n") * 30
    assert feed(mta, "alice@abc.example", message=big) == Milter.REJECT
    assert mta._reply == (
        "552",
        "5.3.4",
        "Message exceeds the maximum size of abc.example",
    )
    assert not mta._headerschanged


def test_fault_in_rcpt_answers_tempfail(
    policy: Policy, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in the policy at RCPT: 451 4.3.0 and a traceback, no exception out."""

    def broken(*args: object) -> None:
        raise RuntimeError("injected")

    monkeypatch.setattr(policy, "check_rcpt", broken)
    mta = connected("127.0.0.2")
    with caplog.at_level(logging.ERROR, logger="mdmilter"):
        assert mta._envrcpt("<alice@abc.example>") == Milter.TEMPFAIL
    assert mta._reply == LOCAL_ERROR
    assert caplog.messages == ["4A1B2C3D: milter fault in envrcpt"]
    assert "RuntimeError: injected" in caplog.text


def test_fault_in_connect_answers_tempfail(
    policy: Policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug at connect: the whole session is told 451 4.3.0."""

    def broken(*args: object) -> None:
        raise ValueError("injected")

    monkeypatch.setattr(policy, "check_connect", broken)
    mta = FakeMta()
    assert mta._connect(ip="127.0.0.9") == Milter.TEMPFAIL
    assert mta._reply == LOCAL_ERROR


def test_fault_at_end_of_message_answers_tempfail(
    policy: Policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The MTA refusing a header change at the end: 451 4.3.0, not a crash."""

    def refused(*args: object) -> None:
        raise Milter.DisabledAction("ADDHDRS")

    monkeypatch.setattr(DomainFilter, "addheader", refused)
    mta = connected("127.0.0.2")
    assert feed(mta, "alice@abc.example") == Milter.TEMPFAIL
    assert mta._reply == LOCAL_ERROR


def test_mail_for_other_domains_left_untouched(policy: Policy) -> None:
    """No recipient of ours (mail relayed elsewhere): no header change at all."""
    mta = connected("127.0.0.2")
    assert feed(mta, "someone@elsewhere.test") == Milter.CONTINUE
    assert not mta._headerschanged
    assert mta._msg.get_all("X-Mdmail-Domain") == [
        "forged.example (rule: trust me)",
        "forged again",
    ]
