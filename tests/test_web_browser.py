"""The web page in headless Chromium against a real `mdmail serve web` process.

Debian's chromium, driven by Playwright's Python package (never a downloaded
browser). Host names are mapped to 127.0.0.1 inside Chromium, so each domain is
reached by its own name, as behind DNS. Pages run with JavaScript off (the page
needs none) in a phone-sized window; each page is saved as a screenshot under
test-output/web/.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from playwright.sync_api import Browser, Page, ViewportSize, sync_playwright

from mdcore.layout import StateRoot
from mdweb.selfservice import SelfService
from tests.pop3_process import DEADLINE, Pop3Process, PopWire
from tests.web_process import WebProcess
from tests.web_site import (
    ABC,
    ABC_HOST,
    BOSS_PASSWORD,
    FOO_ABC_PASSWORD,
    FOO_XYZ_PASSWORD,
    XYZ,
    XYZ_HOST,
    make_domains,
    write_config,
)

CHROMIUM = "/usr/bin/chromium"
OUTPUT = Path(__file__).resolve().parent.parent / "test-output" / "web"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    f"--host-resolver-rules=MAP {ABC_HOST} 127.0.0.1,MAP {XYZ_HOST} 127.0.0.1",
]
PHONE: ViewportSize = {"width": 390, "height": 844}
AUTH_FAILED = b"-ERR [AUTH] Authentication failed\r\n"

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason="Debian's chromium is not installed"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module."""
    with sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


def new_page(browser: Browser, javascript: bool = False) -> Page:
    """A fresh browser profile (own cookies) in a phone-sized window."""
    context = browser.new_context(viewport=PHONE, java_script_enabled=javascript)
    context.set_default_timeout(DEADLINE * 1000)
    return context.new_page()


def shot(page: Page, request: pytest.FixtureRequest, name: str) -> None:
    """Save the whole page as test-output/web/<test>-<name>.png."""
    OUTPUT.mkdir(parents=True, exist_ok=True)
    test = request.node.name.removeprefix("test_")
    path = OUTPUT / f"{test}-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0


def log_in(page: Page, web: WebProcess, host: str, user: str, password: str) -> None:
    """Open the host's page and log in through the form."""
    page.goto(web.url(host))
    page.fill("#user", user)
    page.fill("#password", password)
    page.click("button:has-text('Log in')")


def fill_password_change(page: Page, current: str, new: str) -> None:
    """Fill the password change form (not sent)."""
    page.fill("#current", current)
    page.fill("#new", new)
    page.fill("#again", new)


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebProcess]:
    """The web page over abc.example and xyz.example, each with its own foo."""
    root = StateRoot(tmp_path / "state")
    make_domains(root)
    process = WebProcess(write_config(tmp_path, root), tmp_path)
    process.start()
    yield process
    assert process.stop() == 0


def root_of(web: WebProcess) -> StateRoot:
    """The state root the web process serves."""
    return StateRoot(web.folder / "state")


def test_login(
    browser: Browser, web: WebProcess, request: pytest.FixtureRequest
) -> None:
    """foo logs in on mail.abc.example and sees the account and its quota."""
    page = new_page(browser)
    page.goto(web.url(ABC_HOST))
    assert page.title() == "Log in · abc.example"
    shot(page, request, "login")
    log_in(page, web, ABC_HOST, "foo", FOO_ABC_PASSWORD)
    assert page.inner_text("h2 >> nth=0") == "foo@abc.example"
    assert "Mailbox: 0 bytes of unlimited, 0 messages." in page.inner_text("main")
    shot(page, request, "account")


def test_two_domains_same_user(
    browser: Browser, web: WebProcess, request: pytest.FixtureRequest
) -> None:
    """One browser, two hosts: each foo only with its own domain's password."""
    page = new_page(browser)
    log_in(page, web, ABC_HOST, "foo", FOO_XYZ_PASSWORD)
    assert "Login failed: wrong user name or password." in page.inner_text("main")
    shot(page, request, "abc-refuses-xyz-password")
    log_in(page, web, XYZ_HOST, "foo", FOO_XYZ_PASSWORD)
    assert page.inner_text("h2 >> nth=0") == "foo@xyz.example"
    shot(page, request, "xyz-account")

    # The xyz session is xyz's alone: abc still asks for a login.
    page.goto(web.url(ABC_HOST))
    assert page.title() == "Log in · abc.example"


def test_registration_then_approval(
    browser: Browser, web: WebProcess, request: pytest.FixtureRequest
) -> None:
    """newbie asks for an account; boss, abc's admin, approves it on the page."""
    password = "newbie-long-password"
    newbie = new_page(browser)
    newbie.goto(web.url(ABC_HOST))
    newbie.click("text=Ask for one")
    shot(newbie, request, "register")
    newbie.fill("#user", "newbie")
    newbie.fill("#password", password)
    newbie.fill("#again", password)
    newbie.click("button:has-text('Send request')")
    assert "Your request was sent." in newbie.inner_text("main")
    shot(newbie, request, "request-sent")

    boss = new_page(browser)
    log_in(boss, web, ABC_HOST, "boss", BOSS_PASSWORD)
    assert "Waiting for approval:" in boss.inner_text("main")
    shot(boss, request, "pending")
    boss.click("button[aria-label='Approve newbie']")
    assert "No request waits for approval." in boss.inner_text("main")

    log_in(newbie, web, ABC_HOST, "newbie", password)
    assert newbie.inner_text("h2 >> nth=0") == "newbie@abc.example"
    shot(newbie, request, "approved-account")


def test_deletion_by_the_owner(
    browser: Browser, web: WebProcess, request: pytest.FixtureRequest
) -> None:
    """foo deletes the account; its Maildir is archived and xyz's foo stays."""
    page = new_page(browser)
    log_in(page, web, ABC_HOST, "foo", FOO_ABC_PASSWORD)
    page.fill("#delete-password", FOO_ABC_PASSWORD)
    page.check("input[name=confirm]")
    page.click("button:has-text('Delete account')")
    assert "Your account was deleted." in page.inner_text("main")
    shot(page, request, "deleted")

    service = SelfService(root_of(web))
    assert service.account(ABC, "foo") is None
    assert service.account(XYZ, "foo") is not None
    archive = root_of(web).archive
    assert [path.name.startswith(f"{ABC}.foo.") for path in archive.iterdir()] == [True]


def test_csrf_refusal(
    browser: Browser, web: WebProcess, request: pytest.FixtureRequest
) -> None:
    """A form with no token, or a forged one, gets 403 and changes nothing."""
    page = new_page(browser, javascript=True)
    log_in(page, web, ABC_HOST, "foo", FOO_ABC_PASSWORD)
    for tamper, name in (
        ("field => field.remove()", "no-token"),
        ("field => { field.value = 'forged'; }", "forged-token"),
    ):
        page.goto(web.url(ABC_HOST))
        fill_password_change(page, FOO_ABC_PASSWORD, "another-long-password")
        token = page.locator("form[action='/password'] input[name=csrf]")
        token.evaluate(tamper)
        with page.expect_navigation() as navigation:
            page.click("button:has-text('Change password')")
        response = navigation.value
        assert response is not None and response.status == 403
        assert "The form was stale or forged." in page.inner_text("main")
        shot(page, request, name)

    result = SelfService(root_of(web)).login(ABC, "foo", FOO_ABC_PASSWORD)
    assert result.account is not None


def test_admin_log_shows_only_its_domain(
    browser: Browser, web: WebProcess, request: pytest.FixtureRequest
) -> None:
    """After logins on both domains, abc's admin sees abc's lines and none of xyz's."""
    xyz = new_page(browser)
    log_in(xyz, web, XYZ_HOST, "foo", FOO_XYZ_PASSWORD)
    log_in(new_page(browser), web, XYZ_HOST, "foo", "wrong password")
    boss = new_page(browser)
    log_in(boss, web, ABC_HOST, "boss", BOSS_PASSWORD)
    boss.click("text=The domain's log")
    shot(boss, request, "log")

    lines = boss.inner_text("pre").splitlines()
    assert any("domain=abc.example user=boss event=login status=ok" in x for x in lines)
    assert not [line for line in lines if "xyz" in line]
    xyz_log = (root_of(web).tree(XYZ).logs / "mail.log").read_text()
    assert "domain=xyz.example user=foo event=login status=failed" in xyz_log


def test_password_change_reaches_pop3(
    browser: Browser, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """After a change on the page, POP3 takes the new password and refuses the old."""
    pop = Pop3Process(tmp_path / "pop", login_delay_base=0.001, login_delay_max=0.002)
    pop.add_account(f"foo@{ABC}", FOO_ABC_PASSWORD)
    pop.start()
    config = yaml.safe_load(pop.config_path.read_text())
    config["web"] = {"login_delay_base": 0.001, "login_delay_max": 0.002}
    web_config = pop.folder / "web.yaml"
    web_config.write_text(yaml.safe_dump(config))
    web = WebProcess(web_config, pop.folder)
    web.start()
    try:
        page = new_page(browser)
        log_in(page, web, ABC_HOST, "foo", FOO_ABC_PASSWORD)
        new = "changed-long-password"
        fill_password_change(page, FOO_ABC_PASSWORD, new)
        page.click("button:has-text('Change password')")
        assert "Your password was changed." in page.inner_text("main")
        shot(page, request, "changed")

        assert pop3_login_until_ok(pop, f"foo@{ABC}", new)
        client = PopWire("127.0.0.1", pop.port)
        client.line()
        assert client.login(f"foo@{ABC}", FOO_ABC_PASSWORD) == AUTH_FAILED
        client.close()
    finally:
        assert web.stop() == 0
        pop.stop()


def pop3_login_until_ok(pop: Pop3Process, user: str, password: str) -> bool:
    """Log in over POP3 until it succeeds (the proxy rereads accounts within 1 s)."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        client = PopWire("127.0.0.1", pop.port)
        client.line()
        reply = client.login(user, password)
        client.command("QUIT")
        client.close()
        if reply.startswith(b"+OK Logged in"):
            return True
    return False
