"""The POP3 login rules without sockets: domain choice, password check, throttle."""

from __future__ import annotations

import pytest

from mdcore import throttle as throttle_module
from mdcore.accounts import DISABLED
from mdcore.admin import Admin
from mdcore.config import DomainBinding, ServerConfig
from mdcore.domainchoice import Rule
from mdcore.namespace import Registry
from mdcore.passwords import hash_password
from mdcore.throttle import LoginThrottle
from pop3proxy.auth import Authenticator, LoginAttempt, Outcome
from pop3proxy.events import LoginMethod
from tests.conftest import SECRET_HASH

ABC, XYZ = "127.0.0.2", "127.0.0.3"


@pytest.fixture
def authenticator(admin: Admin, registry: Registry) -> Authenticator:
    """abc.example on 127.0.0.2 (alias abc-alias.example), xyz.example on .3,
    far.example forwarded; foo in abc ("secret") and xyz ("other")."""
    admin.add_domain("abc.example")
    admin.add_domain("xyz.example")
    admin.add_domain_alias("abc-alias.example", "abc.example")
    admin.add_account("abc.example", "foo", SECRET_HASH, hashed=True)
    admin.add_account("abc.example", "off", SECRET_HASH, hashed=True, state=DISABLED)
    other = hash_password("other", "SHA512-CRYPT")
    admin.add_account("xyz.example", "foo", other, hashed=True)
    config = ServerConfig(
        state_root=admin.root.path,
        domains=(
            DomainBinding(domain="abc.example", addresses=(ABC,)),
            DomainBinding(domain="xyz.example", addresses=(XYZ,)),
            DomainBinding(domain="far.example", forward_to="192.0.2.1:110"),
        ),
    )
    return Authenticator(config, registry)


def attempt(
    login: str, password: str, server: str = ABC, authzid: str = ""
) -> LoginAttempt:
    """A USER/PASS login from 127.0.0.1 to `server`."""
    method = LoginMethod.USER_PASS
    return LoginAttempt(login, password, authzid, method, server, "127.0.0.1", "")


OK, FAILED, OFF = Outcome.OK, Outcome.FAILED, Outcome.DISABLED
BY_LOGIN, BY_ADDR, NO_RULE = Rule.LOGIN, Rule.SERVER_ADDRESS, Rule.NONE

CHECKS = [
    # login, password, server address -> outcome, domain, account, rule
    ("foo", "secret", ABC, OK, "abc", "foo", BY_ADDR),
    ("FOO", "secret", ABC, OK, "abc", "foo", BY_ADDR),
    ("foo", "other", XYZ, OK, "xyz", "foo", BY_ADDR),
    ("foo", "other", ABC, FAILED, "abc", "foo", BY_ADDR),
    ("foo@xyz.example", "other", ABC, OK, "xyz", "foo", BY_LOGIN),
    ("foo@xyz.example", "secret", ABC, FAILED, "xyz", "foo", BY_LOGIN),
    ("foo%abc.example", "secret", XYZ, OK, "abc", "foo", BY_LOGIN),
    ("foo@abc-alias.example", "secret", XYZ, OK, "abc", "foo", BY_LOGIN),
    ("nobody", "secret", ABC, FAILED, "abc", "nobody", BY_ADDR),
    ("foo@nowhere.example", "secret", ABC, FAILED, "nowhere.example", "", BY_LOGIN),
    ("foo", "secret", "127.0.0.1", FAILED, "", "", NO_RULE),
    ("off", "secret", ABC, OFF, "abc", "off", BY_ADDR),
    ("off", "wrong", ABC, FAILED, "abc", "off", BY_ADDR),
]


@pytest.mark.parametrize(
    ("login", "password", "server", "outcome", "domain", "account", "rule"), CHECKS
)
def test_login_is_checked_in_the_chosen_domain_only(
    authenticator: Authenticator,
    login: str,
    password: str,
    server: str,
    outcome: Outcome,
    domain: str,
    account: str,
    rule: Rule,
) -> None:
    """Each login lands in one domain by the shared rules and is checked there."""
    verdict = authenticator.check(attempt(login, password, server))
    expected_domain = f"{domain}.example" if domain in ("abc", "xyz") else domain
    assert verdict.outcome is outcome
    assert (verdict.domain, verdict.account) == (expected_domain, account)
    assert verdict.choice.rule is rule
    assert (verdict.maildir is not None) == (outcome is Outcome.OK)


def test_forwarded_domain_is_not_checked_here(authenticator: Authenticator) -> None:
    """A domain with forward_to gets a FORWARD verdict naming the remote."""
    verdict = authenticator.check(attempt("foo@far.example", "anything"))
    assert verdict.outcome is Outcome.FORWARD
    assert verdict.forward_to == "192.0.2.1:110"
    assert verdict.choice.address == "foo@far.example"


def test_authzid_must_name_the_login(authenticator: Authenticator) -> None:
    """RFC 4616: acting as another user is refused; the same name is fine."""
    assert authenticator.check(attempt("foo", "secret", authzid="foo")).outcome is (
        Outcome.OK
    )
    refused = authenticator.check(attempt("foo", "secret", authzid="bar"))
    assert refused.outcome is Outcome.FAILED


@pytest.mark.parametrize(
    ("client", "trusted"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("::ffff:127.0.0.9", True),
        ("", True),
        ("192.0.2.7", False),
        ("2001:db8::1", False),
        ("not-an-address", False),
    ],
)
def test_trusted_networks(
    authenticator: Authenticator, client: str, trusted: bool
) -> None:
    """Loopback (the default trusted_networks) and unix peers may send passwords."""
    assert authenticator.is_trusted(client) is trusted


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def throttle(clock: Clock) -> LoginThrottle:
    """Base 0.5 s, at most 4 s, forgotten after 60 s."""
    return LoginThrottle(0.5, 4.0, forget_after=60.0, clock=clock)


def test_each_failure_doubles_the_wait_up_to_the_maximum() -> None:
    """0.5, 1, 2, 4, then 4 again."""
    limiter = throttle(Clock())
    keys = ("192.0.2.1", "foo@abc.example")
    waits = [limiter.settle(keys, ok=False) for _ in range(5)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_success_waits_like_a_failure_then_resets() -> None:
    """A success after failures costs as long as a failure would, then clears."""
    limiter = throttle(Clock())
    keys = ("192.0.2.1", "foo@abc.example")
    assert limiter.settle(keys, ok=True) == 0.0
    limiter.settle(keys, ok=False)
    assert limiter.settle(keys, ok=True) == 1.0
    assert limiter.settle(keys, ok=True) == 0.0
    assert limiter.settle(keys, ok=False) == 0.5


def test_client_and_account_are_counted_apart() -> None:
    """An account attacked from many addresses slows down, and so does one address."""
    limiter = throttle(Clock())
    limiter.settle(("192.0.2.1", "foo@abc.example"), ok=False)
    limiter.settle(("192.0.2.1", "foo@abc.example"), ok=False)
    assert limiter.settle(("192.0.2.2", "foo@abc.example"), ok=False) == 2.0
    assert limiter.settle(("192.0.2.1", "bar@abc.example"), ok=False) == 2.0
    assert limiter.settle(("192.0.2.3", "baz@abc.example"), ok=False) == 0.5


def test_failures_are_forgotten() -> None:
    """After forget_after seconds without a failure a key starts afresh."""
    clock = Clock()
    limiter = throttle(clock)
    keys = ("192.0.2.1", "foo@abc.example")
    limiter.settle(keys, ok=False)
    limiter.settle(keys, ok=False)
    clock.now += 61
    assert limiter.failures("192.0.2.1") == 0
    assert limiter.settle(keys, ok=False) == 0.5


def test_remembered_keys_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A spray of addresses cannot grow the table past its bound."""
    monkeypatch.setattr(throttle_module, "MAX_REMEMBERED", 4)
    limiter = throttle(Clock())
    for number in range(10):
        limiter.settle((f"192.0.2.{number}",), ok=False)
    assert limiter.failures("192.0.2.0") == 0
    assert limiter.failures("192.0.2.9") == 1
