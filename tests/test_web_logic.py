"""The web page's rules without HTTP: hosts, forwarded headers, policy, sessions."""

from __future__ import annotations

from pathlib import Path

import pytest

from mdcore.accounts import ACTIVE, PENDING
from mdcore.config import DomainBinding
from mdcore.layout import StateRoot
from mdcore.namespace import Registry
from mdcore.passwords import verify_password
from mdcore.settings import DomainSettings
from mdweb.forwarded import Origin, origin, parse_networks
from mdweb.hosts import HostMap, strip_port
from mdweb.logtail import tail_lines
from mdweb.passwordpolicy import Weakness, check_password, common_passwords
from mdweb.selfservice import Outcome, SelfService
from mdweb.sessions import SessionCodec, fresh_session, token_matches
from tests.web_site import (
    ABC,
    BOSS_PASSWORD,
    FOO_ABC_PASSWORD,
    FOO_XYZ_PASSWORD,
    XYZ,
    make_domains,
)


@pytest.fixture
def service(root: StateRoot) -> SelfService:
    """Two domains with their own foo, and the page's actions on them."""
    make_domains(root)
    return SelfService(root)


@pytest.mark.parametrize(
    ("host", "domain"),
    [
        ("abc.example", ABC),
        ("mail.abc.example", ABC),
        ("webmail.abc.example:8080", ABC),
        ("MAIL.XYZ.EXAMPLE", XYZ),
        ("portal.xyz.example", XYZ),
        ("www.abc.example", None),
        ("other.example", None),
        ("127.0.0.1:8080", None),
        ("[::1]:8080", None),
        ("", None),
        ("bad host/..", None),
    ],
)
def test_host_names_map_to_domains(root: StateRoot, host: str, domain: str) -> None:
    """A domain answers under its name, mail., webmail. and its server names only."""
    make_domains(root)
    binding = DomainBinding(domain=XYZ, server_names=("portal.xyz.example",))
    hosts = HostMap(Registry(root, refresh_interval=0.0), (binding,))
    assert hosts.domain(host) == domain


def test_strip_port() -> None:
    """The port and IPv6 brackets are cut off a Host value."""
    assert strip_port("a.example:80") == "a.example"
    assert strip_port("[2001:db8::1]:443") == "2001:db8::1"
    assert strip_port("a.example") == "a.example"


PROXY = parse_networks(("10.0.0.0/8",))
FORWARDED = {
    "host": "127.0.0.1:8080",
    "x-forwarded-for": "198.51.100.7, 10.0.0.3",
    "x-forwarded-host": "mail.abc.example",
    "x-forwarded-proto": "https",
}


def test_forwarded_headers_count_from_a_trusted_proxy() -> None:
    """From a trusted proxy: the browser's address, host and scheme are believed."""
    found = origin("10.0.0.2", "http", FORWARDED, PROXY)
    assert found == Origin("198.51.100.7", "mail.abc.example", "https")
    assert found.secure


def test_forwarded_headers_are_ignored_from_anyone_else() -> None:
    """From any other peer the headers are ignored: its own address and Host."""
    found = origin("198.51.100.9", "http", FORWARDED, PROXY)
    assert found == Origin("198.51.100.9", "127.0.0.1:8080", "http")
    assert origin("10.0.0.2", "http", FORWARDED, ()).client == "10.0.0.2"


def test_a_forged_left_hop_does_not_win() -> None:
    """A client's own X-Forwarded-For entry is not taken over the proxy's."""
    headers = {"host": "h", "x-forwarded-for": "203.0.113.1, 198.51.100.7"}
    assert origin("10.0.0.2", "http", headers, PROXY).client == "198.51.100.7"


def test_password_policy() -> None:
    """Too short, the user name, a common password and control characters fail."""
    settings = DomainSettings(password_min_length=10)
    assert check_password(settings, "foo", "short") is Weakness.TOO_SHORT
    assert check_password(settings, "longusername", "LongUserName") is (
        Weakness.USER_NAME
    )
    assert check_password(settings, "foo", "Password123") is Weakness.COMMON
    assert check_password(settings, "foo", "line\nbreak-pass") is Weakness.UNUSABLE
    assert check_password(settings, "foo", "correct horse staple") is None
    lenient = DomainSettings(password_min_length=4, refuse_common_passwords=False)
    assert check_password(lenient, "foo", "qwerty") is None
    assert "123456" in common_passwords()


def test_session_cookies_are_signed_and_bound_to_a_domain() -> None:
    """A cookie read back is the same session; altered or foreign ones are not."""
    codec = SessionCodec(b"k" * 32, max_age=60)
    session = codec.login(fresh_session(ABC), "foo", "{PLAIN}x")
    value = codec.dumps(session)
    assert codec.loads(value, ABC) == session
    assert codec.loads(value, XYZ) is None
    assert codec.loads(value[:-2] + "xx", ABC) is None
    assert SessionCodec(b"o" * 32, 60).loads(value, ABC) is None
    assert token_matches(session, session.csrf)
    assert not token_matches(session, "")
    assert not token_matches(session, "forged")


def test_login_failures_read_the_same(service: SelfService) -> None:
    """Unknown user and wrong password give one outcome; xyz's password fails on abc."""
    assert service.login(ABC, "foo", FOO_ABC_PASSWORD).outcome is Outcome.OK
    assert service.login(ABC, "FOO", FOO_ABC_PASSWORD).outcome is Outcome.OK
    for user, password in (
        ("foo", FOO_XYZ_PASSWORD),
        ("nobody", FOO_ABC_PASSWORD),
        ("bad name/", "x"),
    ):
        assert service.login(ABC, user, password).outcome is Outcome.LOGIN_FAILED


def test_password_change_needs_the_current_one(service: SelfService) -> None:
    """Wrong current, differing or weak new passwords change nothing."""
    new = "brand-new-pass-phrase"
    before = service.account(ABC, "foo")
    assert service.change_password(ABC, "foo", "wrong", new, new) is (
        Outcome.WRONG_PASSWORD
    )
    assert service.change_password(ABC, "foo", FOO_ABC_PASSWORD, new, new + "x") is (
        Outcome.MISMATCH
    )
    assert service.change_password(ABC, "foo", FOO_ABC_PASSWORD, "foo", "foo") is (
        Weakness.TOO_SHORT
    )
    assert service.account(ABC, "foo") == before
    assert service.change_password(ABC, "foo", FOO_ABC_PASSWORD, new, new) is (
        Outcome.OK
    )
    account = service.account(ABC, "foo")
    assert account is not None and verify_password(account.password, new)
    other = service.account(XYZ, "foo")
    assert other is not None and verify_password(other.password, FOO_XYZ_PASSWORD)


def test_registration_waits_for_an_admin(service: SelfService) -> None:
    """A request makes a pending account; only the domain's admin lets it in."""
    password = "new-user-pass-phrase"
    assert service.register(ABC, "newbie", password, password) is Outcome.OK
    assert service.login(ABC, "newbie", password).outcome is Outcome.PENDING
    assert service.pending(ABC) == ["newbie"]
    assert service.approve(ABC, "foo", "newbie") is Outcome.NOT_ALLOWED
    assert service.register(ABC, "newbie", password, password) is Outcome.NAME_REFUSED
    assert service.register(XYZ, "newbie", password, password) is (
        Outcome.REGISTRATION_CLOSED
    )
    assert service.approve(ABC, "boss", "newbie") is Outcome.OK
    account = service.account(ABC, "newbie")
    assert account is not None and account.state == ACTIVE
    assert service.approve(ABC, "boss", "newbie") is Outcome.NO_SUCH_REQUEST


def test_refusal_archives_the_request(service: SelfService, root: StateRoot) -> None:
    """A refused request is gone; its empty mailbox is archived, as the CLI does."""
    password = "new-user-pass-phrase"
    service.register(ABC, "maybe", password, password)
    account = service.account(ABC, "maybe")
    assert account is not None and account.state == PENDING
    assert service.refuse(ABC, "boss", "maybe") is Outcome.OK
    assert service.account(ABC, "maybe") is None
    assert any(path.name.startswith(f"{ABC}.maybe.") for path in root.archive.iterdir())


def test_owner_deletes_with_password(service: SelfService, root: StateRoot) -> None:
    """Deletion needs the password; the mailbox goes under archive/."""
    assert service.delete(ABC, "foo", "wrong") is Outcome.WRONG_PASSWORD
    assert service.account(ABC, "foo") is not None
    assert service.delete(ABC, "foo", FOO_ABC_PASSWORD) is Outcome.OK
    assert service.account(ABC, "foo") is None
    assert service.account(XYZ, "foo") is not None
    archived = [path.name for path in root.archive.iterdir()]
    assert len(archived) == 1 and archived[0].startswith(f"{ABC}.foo.")


def test_admins_are_per_domain(service: SelfService) -> None:
    """boss administers abc; foo administers xyz and not abc."""
    assert service.is_admin(ABC, "boss")
    assert not service.is_admin(ABC, "foo")
    assert service.is_admin(XYZ, "foo")
    assert service.login(ABC, "boss", BOSS_PASSWORD).outcome is Outcome.OK


def test_tail_lines(tmp_path: Path) -> None:
    """The last lines of a file, across read blocks; none for a missing file."""
    path = tmp_path / "mail.log"
    path.write_text("".join(f"line {number} {'x' * 50}\n" for number in range(5000)))
    lines = tail_lines(path, 3)
    assert lines == [f"line {number} {'x' * 50}" for number in (4997, 4998, 4999)]
    assert len(tail_lines(path, 2000)) == 2000
    assert tail_lines(tmp_path / "missing", 5) == []
