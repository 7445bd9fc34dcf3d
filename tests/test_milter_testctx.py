"""The pymilter class through pymilter's own fake MTA context (no socket, no MTA)."""

import io
import logging
from collections.abc import Iterator

import mdmilter.filter as filter_module
import Milter
import pytest
from mdmilter.filter import DomainFilter, factory
from mdmilter.policy import Policy
from Milter import testctx  # not TestCtx by name: pytest would collect it

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


class FakeMta(testctx.TestCtx):  # type: ignore[misc]
    """pymilter's fake MTA, taking NOREPLY as a real MTA does: as "go on".

    The milter negotiates header fields and body chunks without replies, and
    TestCtx would take the NOREPLY it then returns for a refusal.
    """

    def _header(self, name: str, value: object) -> int:
        return _went_on(super()._header(name, value))

    def _feed_body(self, stream: io.BytesIO) -> int:
        while chunk := stream.read(8192):
            if (rc := _went_on(self._priv.body(chunk))) != Milter.CONTINUE:
                return rc
        return int(Milter.CONTINUE)


def _went_on(rc: int) -> int:
    return int(Milter.CONTINUE) if rc == Milter.NOREPLY else rc


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


def test_accepted_message_logged_once_at_its_end(
    policy: Policy, caplog: pytest.LogCaptureFixture
) -> None:
    """Two accepted recipients: one INFO line, at the end, with the queue id."""
    mta = connected("127.0.0.2")
    with caplog.at_level(logging.INFO, logger="mdmilter"):
        assert feed(mta, "alice@abc.example", "alice") == Milter.CONTINUE
    assert caplog.messages == [
        "4A1B2C3D: milter size=122, nrcpt=2, domain=abc.example, rule=message, "
        f"status=accepted (X-Mdmail-Domain: {OUR_HEADER})"
    ]


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


# Negotiation: only the steps and macros the policy uses.

EVERY_STEP = 0x1FFFFF
USED_ACTIONS = Milter.ADDHDRS | Milter.CHGHDRS | Milter.ADDRCPT | Milter.DELRCPT


def negotiated(actions: int, steps: int) -> tuple[FakeMta, DomainFilter, list[int]]:
    """A milter negotiating with a fake MTA that offers `actions` and `steps`."""
    mta = FakeMta()
    mta._stage = -1  # the fake MTA's negotiation stage, when macros can be asked for
    milter = Milter.factory()
    milter._setctx(mta)
    opts = [actions, steps, 0, 0]
    assert milter.negotiate(opts) == Milter.CONTINUE
    return mta, milter, opts


def test_negotiation_skips_and_leaves_unanswered(policy: Policy) -> None:
    """Everything offered: three steps skipped, header and body left unanswered."""
    mta, milter, opts = negotiated(Milter.CURR_ACTS, EVERY_STEP)
    skipped = Milter.P_NOHELO | Milter.P_NOUNKNOWN | Milter.P_NOEOH
    assert opts == [
        Milter.CURR_ACTS,
        skipped | Milter.P_NR_HDR | Milter.P_NR_BODY,
        0,
        0,
    ]
    assert milter.header_bytes("Subject", b"hello") == Milter.NOREPLY
    assert milter.body(b"Hello.\r\n") == Milter.NOREPLY
    assert milter.data() == Milter.CONTINUE  # answered: see DomainFilter.data
    assert mta._symlist[Milter.M_CONNECT] == {
        b"{daemon_addr}",
        b"{if_addr}",
        b"{daemon_name}",
    }
    stages = (Milter.M_ENVFROM, Milter.M_ENVRCPT, Milter.M_EOM)
    assert [mta._symlist[stage] for stage in stages] == [{b"{i}"}] * 3
    assert [mta._symlist[stage] for stage in (Milter.M_HELO, Milter.M_DATA)] == [
        None,
        None,
    ]


def test_negotiation_with_an_older_mta(policy: Policy) -> None:
    """No reply-less steps and no macro lists offered: every step is answered."""
    mta, milter, opts = negotiated(USED_ACTIONS, Milter.P_NOHELO | Milter.P_NOEOH)
    assert opts == [USED_ACTIONS, Milter.P_NOHELO | Milter.P_NOEOH, 0, 0]
    assert milter.header_bytes("Subject", b"hello") == Milter.CONTINUE
    assert milter.body(b"Hello.\r\n") == Milter.CONTINUE
    assert mta._symlist == [None] * 7


def test_size_counts_header_end_without_the_eoh_step(policy: Policy) -> None:
    """2000 octets allowed: header, empty line and body up to that pass, no more."""
    for body, expected in ((1985, Milter.CONTINUE), (1986, Milter.REJECT)):
        mta = connected("127.0.0.1")
        message = "Subject: x\n\n" + "z" * body + "\n"
        assert feed(mta, "alice@abc.example", message=message) == expected


def test_fault_in_header_answers_tempfail_at_the_end(
    policy: Policy, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug counting the header (no answer awaited): 451 4.3.0 at the end instead."""

    class Exploding(str):
        def __eq__(self, other: object) -> bool:
            raise RuntimeError("injected")

        __hash__ = str.__hash__

    monkeypatch.setattr(filter_module, "DOMAIN_HEADER_NAME", Exploding("x"))
    mta = connected("127.0.0.2")
    with caplog.at_level(logging.ERROR, logger="mdmilter"):
        assert feed(mta, "alice@abc.example") == Milter.TEMPFAIL
    assert mta._reply == LOCAL_ERROR
    assert not mta._headerschanged
    assert caplog.messages[0].endswith(": milter fault in header_bytes")
    assert "RuntimeError: injected" in caplog.text
