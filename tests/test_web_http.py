"""The web page over HTTP in process (Starlette's test client): no browser, no port."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from mdcore.layout import StateRoot
from mdcore.passwords import verify_password
from mdweb import report
from mdweb.app import create_app
from mdweb.selfservice import SelfService
from mdweb.sessions import COOKIE_NAME
from tests.web_site import (
    ABC,
    ABC_HOST,
    BOSS_PASSWORD,
    FOO_ABC_PASSWORD,
    FOO_XYZ_PASSWORD,
    XYZ,
    XYZ_HOST,
    make_domains,
    site_config,
)

KEY = b"test-key-" * 4
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
LOGIN_FAILED = "Login failed: wrong user name or password."


@pytest.fixture
def app_root(tmp_path: Path, root: StateRoot) -> Iterator[tuple[TestClient, Path]]:
    """The app over two domains; yields a client factory's first client and folder."""
    make_domains(root)
    config = site_config(tmp_path, root, trusted_proxies=["10.0.0.0/8"])
    app = create_app(config, KEY)
    with TestClient(
        app, base_url=f"http://{ABC_HOST}", client=("127.0.0.1", 40000)
    ) as client:
        yield client, tmp_path


def client_for(app_client: TestClient, host: str) -> TestClient:
    """Another browser (own cookies) on the same app, for another host name."""
    return TestClient(
        app_client.app, base_url=f"http://{host}", client=("127.0.0.1", 40001)
    )


def token(client: TestClient) -> str:
    """The CSRF token of the page the client gets at /."""
    found = CSRF.search(client.get("/").text)
    assert found is not None
    return found[1]


def login(client: TestClient, user: str, password: str) -> str:
    """Log in; the page shown afterwards."""
    form = {"csrf": token(client), "user": user, "password": password}
    return client.post("/login", data=form).text


@pytest.fixture
def abc(app_root: tuple[TestClient, Path]) -> TestClient:
    """A browser on mail.abc.example."""
    return app_root[0]


def test_login_page_and_cookie_flags(abc: TestClient) -> None:
    """The login form has a CSRF field; the cookie is HttpOnly and SameSite."""
    reply = abc.get("/")
    assert reply.status_code == 200
    assert '<meta name="viewport"' in reply.text
    assert "<script" not in reply.text
    cookie = reply.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Secure" not in cookie
    assert reply.headers["x-frame-options"] == "DENY"


def test_login_and_logout(abc: TestClient) -> None:
    """foo logs in with abc's password and sees the account page; logout ends it."""
    page = login(abc, "foo", FOO_ABC_PASSWORD)
    assert "foo@abc.example" in page and "Change password" in page
    assert "Domain administration" not in page
    abc.post("/logout", data={"csrf": token(abc)})
    assert "Log in" in abc.get("/").text


def test_unknown_user_and_wrong_password_read_the_same(abc: TestClient) -> None:
    """Same status and same page, token aside, for unknown user and bad password."""
    csrf = token(abc)
    wrong = abc.post("/login", data={"csrf": csrf, "user": "foo", "password": "x"})
    unknown = abc.post("/login", data={"csrf": csrf, "user": "nosuch", "password": "x"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.text == unknown.text
    assert LOGIN_FAILED in wrong.text


def test_two_domains_keep_their_own_foo(app_root: tuple[TestClient, Path]) -> None:
    """foo's password of xyz fails on abc and works on xyz; sessions do not cross."""
    abc = app_root[0]
    xyz = client_for(abc, XYZ_HOST)
    assert LOGIN_FAILED in login(abc, "foo", FOO_XYZ_PASSWORD)
    assert "foo@xyz.example" in login(xyz, "foo", FOO_XYZ_PASSWORD)

    # xyz's signed cookie, shown to abc's host, is not a session there.
    stolen = xyz.cookies[COOKIE_NAME]
    thief = client_for(abc, ABC_HOST)
    thief.cookies.set(COOKIE_NAME, stolen)
    assert "Log in" in thief.get("/").text


def test_post_without_or_with_a_wrong_token_changes_nothing(
    abc: TestClient, root: StateRoot
) -> None:
    """403 for a missing or forged CSRF token, and the password stays."""
    login(abc, "foo", FOO_ABC_PASSWORD)
    new = "another-long-password"
    form = {"current": FOO_ABC_PASSWORD, "new": new, "again": new}
    for extra in ({}, {"csrf": "forged"}):
        reply = abc.post("/password", data=form | extra)
        assert reply.status_code == 403
        assert "stale or forged" in reply.text
    account = SelfService(root).account(ABC, "foo")
    assert account is not None and verify_password(account.password, FOO_ABC_PASSWORD)
    assert abc.post("/login", data={"user": "foo", "password": "x"}).status_code == 403


def test_password_change_ends_other_sessions(app_root: tuple[TestClient, Path]) -> None:
    """After a change, this browser stays in and another browser of foo is out."""
    abc = app_root[0]
    other = client_for(abc, ABC_HOST)
    login(other, "foo", FOO_ABC_PASSWORD)
    login(abc, "foo", FOO_ABC_PASSWORD)
    new = "another-long-password"
    form = {"csrf": token(abc), "current": FOO_ABC_PASSWORD, "new": new, "again": new}
    reply = abc.post("/password", data=form)
    assert "Your password was changed." in reply.text
    assert "foo@abc.example" in abc.get("/").text
    assert "Log in" in other.get("/").text


def test_weak_password_is_refused(abc: TestClient) -> None:
    """A common password is refused with the policy's reason."""
    login(abc, "foo", FOO_ABC_PASSWORD)
    form = {
        "csrf": token(abc),
        "current": FOO_ABC_PASSWORD,
        "new": "password123",
        "again": "password123",
    }
    reply = abc.post("/password", data=form)
    assert reply.status_code == 400
    assert "That password is too common; choose another." in reply.text


def test_unknown_host_is_404_and_names_no_domain(abc: TestClient) -> None:
    """A host we do not serve gets a 404 page that lists nothing."""
    reply = client_for(abc, "mail.other.example").get("/")
    assert reply.status_code == 404
    assert "abc" not in reply.text and "xyz" not in reply.text


def test_forwarded_host_counts_only_from_a_trusted_proxy(abc: TestClient) -> None:
    """X-Forwarded-Host picks the domain from 10/8, and is ignored from 127.0.0.1."""
    headers = {"x-forwarded-host": XYZ_HOST, "x-forwarded-proto": "https"}
    proxied = TestClient(abc.app, base_url="http://127.0.0.1", client=("10.0.0.5", 1))
    reply = proxied.get("/", headers=headers)
    assert "Mail for xyz.example" in reply.text
    assert "Secure" in reply.headers["set-cookie"]
    direct = client_for(abc, "127.0.0.1").get("/", headers=headers)
    assert direct.status_code == 404


def test_registration_and_approval(app_root: tuple[TestClient, Path]) -> None:
    """A request waits; the abc admin sees and approves it; then it logs in."""
    abc = app_root[0]
    password = "newbie-long-password"
    form = {"csrf": token(abc), "user": "newbie", "password": password}
    reply = abc.post("/register", data=form | {"again": password})
    assert "Your request was sent." in reply.text
    assert "waits for approval" in login(abc, "newbie", password)

    boss = client_for(abc, ABC_HOST)
    page = login(boss, "boss", BOSS_PASSWORD)
    assert "Waiting for approval" in page and "newbie" in page
    boss.post("/approve", data={"csrf": token(boss), "user": "newbie"})
    assert "newbie@abc.example" in login(abc, "newbie", password)


def test_approval_needs_a_domain_admin(app_root: tuple[TestClient, Path]) -> None:
    """foo of abc may not approve; foo of xyz (xyz's admin) cannot touch abc."""
    abc = app_root[0]
    password = "newbie-long-password"
    form = {"csrf": token(abc), "user": "newbie", "password": password}
    abc.post("/register", data=form | {"again": password})
    login(abc, "foo", FOO_ABC_PASSWORD)
    reply = abc.post("/approve", data={"csrf": token(abc), "user": "newbie"})
    assert reply.status_code == 403
    assert abc.get("/log").status_code == 403
    assert "waits for approval" in login(client_for(abc, ABC_HOST), "newbie", password)


def test_owner_deletes_the_account(abc: TestClient, root: StateRoot) -> None:
    """Deletion with the password archives the mailbox and logs the browser out."""
    login(abc, "foo", FOO_ABC_PASSWORD)
    form = {"csrf": token(abc), "password": FOO_ABC_PASSWORD, "confirm": "yes"}
    reply = abc.post("/delete", data=form)
    assert "Your account was deleted." in reply.text
    assert SelfService(root).account(ABC, "foo") is None
    assert any(path.name.startswith(f"{ABC}.foo.") for path in root.archive.iterdir())
    assert LOGIN_FAILED in login(abc, "foo", FOO_ABC_PASSWORD)


def test_admin_log_holds_only_the_own_domain(
    app_root: tuple[TestClient, Path], root: StateRoot
) -> None:
    """boss of abc sees abc's log lines and none of xyz's."""
    abc = app_root[0]
    (root.tree(ABC).logs / "mail.log").write_text("abc line one\nabc line two\n")
    (root.tree(XYZ).logs / "mail.log").write_text("xyz secret line\n")
    login(abc, "boss", BOSS_PASSWORD)
    page = abc.get("/log").text
    assert "abc line one" in page and "abc line two" in page
    assert "xyz" not in page
    assert XYZ not in page


def test_admin_report_holds_only_the_own_domain(
    app_root: tuple[TestClient, Path], root: StateRoot
) -> None:
    """boss gets abc's report page; it names no other domain; foo gets 403."""
    if not report.available():
        pytest.skip("mdcore.reports is not installed")
    abc = app_root[0]
    login(abc, "boss", BOSS_PASSWORD)
    page = abc.get("/report")
    assert page.status_code == 200
    assert "Mail report for" in page.text and ABC in page.text
    assert "xyz" not in page.text

    foo = client_for(abc, ABC_HOST)
    login(foo, "foo", FOO_ABC_PASSWORD)
    assert foo.get("/report").status_code == 403
