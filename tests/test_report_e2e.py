"""`mdmail report` and `report trace` on the logs of a real run, its HTML in Chromium.

One run per module: a real Postfix takes mail over SMTP for foo@abc.example,
foo@xyz.example (two people with one user name) and an unknown user, and hands it
over LMTP to lmtpd; the POP3 proxy then sees one good login with a RETR and one
failed login. The report command must count exactly that, each domain's report
must name nothing of the other, and a message is traced by its Postfix queue id
from smtpd to our mailbox. The HTML report is opened in Debian's chromium
(Playwright, as in test_web_browser.py) and saved under test-output/report/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.lmtp_process import LmtpProcess
from tests.mta import PostfixInstance, QueueLayout, wait_until
from tests.pop3_process import DEADLINE, Pop3Process, PopWire, unstuff
from tests.test_web_browser import ARGS, CHROMIUM, PHONE

ABC, XYZ = "abc.example", "xyz.example"
FOO_ABC, FOO_XYZ = f"foo@{ABC}", f"foo@{XYZ}"
SENDER = "sender@sender.example"
OUTPUT = Path(__file__).resolve().parent.parent / "test-output" / "report"
AUTH_FAILED = b"-ERR [AUTH] Authentication failed\r\n"

# One message per recipient, each of its own length, so every figure is traceable.
MESSAGES = {
    FOO_ABC: b"From: sender@sender.example\r\nSubject: to abc\r\n\r\n"
    + b"abc line\r\n" * 40,
    FOO_XYZ: b"From: sender@sender.example\r\nSubject: to xyz\r\n\r\n"
    + b"xyz line\r\n" * 90,
    f"nobody@{ABC}": b"From: sender@sender.example\r\nSubject: lost\r\n\r\nHi.\r\n",
}


@dataclass(frozen=True)
class MailRun:
    """What the real run did, as the servers and clients saw it."""

    config: Path
    postfix_log: Path
    queue_ids: dict[str, str]
    stored_bytes: dict[str, int]
    retrieved_bytes: int
    folder: Path


def mdmail(run: MailRun, *args: str) -> str:
    """`mdmail --config ... ARGS` as its own process; it must succeed quietly."""
    environment = {k: v for k, v in os.environ.items() if k != "MDMAIL_CONFIG"}
    done = subprocess.run(
        [sys.executable, "-m", "mdmail", "--config", str(run.config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    return done.stdout


def report_json(run: MailRun, *args: str) -> Any:
    """The report of the last hour as parsed JSON."""
    return json.loads(mdmail(run, "report", "--last", "1h", "--json", *args))


def send_all(postfix: PostfixInstance, lmtp: LmtpProcess) -> dict[str, str]:
    """Submit each message over SMTP; the queue id Postfix gave each recipient."""
    for address, message in MESSAGES.items():
        assert postfix.send(SENDER, [address], message) == {}
    handed = postfix.wait_for_log(
        r"postfix/lmtp\[\d+\]: (\w+): to=<([^>]+)>, .*status=(sent|bounced)",
        timeout=DEADLINE,
        count=len(MESSAGES),
    )
    for address in (FOO_ABC, FOO_XYZ):
        wait_for_message(lmtp, address)
    return {match[2]: match[1] for match in handed}


def wait_for_message(lmtp: LmtpProcess, address: str) -> None:
    """Wait until the account's Maildir holds its one message."""
    what = f"the message for {address}"
    wait_until(lambda: len(lmtp.messages(address)) == 1, DEADLINE, what)


def fetch_over_pop3(pop: Pop3Process) -> int:
    """foo@abc logs in and RETRs its message; foo@xyz fails; the octets fetched."""
    good = PopWire("127.0.0.1", pop.port)
    good.line()
    assert good.login(FOO_ABC, "secret").startswith(b"+OK Logged in, 1 messages")
    status = good.command("RETR 1")
    assert status.startswith(b"+OK")
    octets = len(unstuff(good.listing()))
    assert good.command("QUIT").startswith(b"+OK")
    good.close()

    bad = PopWire("127.0.0.1", pop.port)
    bad.line()
    assert bad.login(FOO_XYZ, "not the password") == AUTH_FAILED
    assert bad.command("QUIT").startswith(b"+OK")
    bad.close()

    # The logout line is written once the session has ended on the server side.
    log = pop.root.tree(ABC).logs / "mail.log"
    wait_until(
        lambda: "logout domain=abc.example" in log.read_text(), DEADLINE, "logout"
    )
    return octets


@pytest.fixture(scope="module")
def mail_run(
    tmp_path_factory: pytest.TempPathFactory, postfix_queue_layout: QueueLayout
) -> Iterator[MailRun]:
    """The whole real run, once: servers started, mail sent and fetched, stopped."""
    folder = tmp_path_factory.mktemp("report-e2e")
    lmtp = LmtpProcess(folder / "lmtpd")
    for address in (FOO_ABC, FOO_XYZ):
        lmtp.add_account(address)

    # Plain relay_domains and a transport, no recipient table: Postfix takes
    # the unknown user, and lmtpd refuses it at RCPT, so our log has it.
    postfix = PostfixInstance(folder / "postfix", queue_layout=postfix_queue_layout)
    route = f"lmtp:inet:127.0.0.1:{lmtp.port}"
    postfix.transport = {ABC: route, XYZ: route}
    pop = Pop3Process(folder / "pop3", login_delay_base=0.001, login_delay_max=0.002)
    pop.root, pop.admin = lmtp.root, lmtp.admin
    try:
        lmtp.start()
        postfix.start()
        pop.start()
        queue_ids = send_all(postfix, lmtp)
        retrieved = fetch_over_pop3(pop)
    finally:
        pop.stop()
        postfix.stop()
        lmtp.stop()
        lmtp.close_notify()
    stored = {address: stored_bytes(lmtp, address) for address in (FOO_ABC, FOO_XYZ)}
    yield MailRun(
        lmtp.config_path, postfix.maillog, queue_ids, stored, retrieved, folder
    )


def stored_bytes(lmtp: LmtpProcess, address: str) -> int:
    """Bytes of the account's messages in new/ and cur/, as lmtpd wrote them."""
    maildir = lmtp.maildir(address)
    files = [*(maildir / "new").iterdir(), *(maildir / "cur").iterdir()]
    return sum(path.stat().st_size for path in files)


def test_whole_server_report_counts_what_was_done(mail_run: MailRun) -> None:
    """Two deliveries, one refusal, one login, one failure, one RETR: all counted."""
    data = report_json(mail_run)

    assert (data["scope"], data["domains"]) == ("all domains", [ABC, XYZ])
    assert data["delivered"] == 2
    assert data["delivered_bytes"] == sum(mail_run.stored_bytes.values())
    assert (data["refused"], data["refused_bytes"], data["deferred"]) == (1, 0, 0)
    assert data["refused_by_reason"] == [{"reason": "5.1.1 User unknown", "count": 1}]
    assert (data["logins"], data["login_failures"]) == (1, 1)
    assert (data["retrieved"], data["retrieved_bytes"]) == (
        1,
        mail_run.retrieved_bytes,
    )
    assert data["latency"]["count"] == 2
    assert 0 < data["latency"]["p50_ms"] <= data["latency"]["p99_ms"]
    rows = {row["account"]: row for row in data["accounts"]}
    assert sorted(rows) == [FOO_ABC, FOO_XYZ, f"nobody@{ABC}"]
    assert rows[FOO_ABC]["delivered_bytes"] == mail_run.stored_bytes[FOO_ABC]
    assert (rows[FOO_XYZ]["logins"], rows[FOO_XYZ]["login_failures"]) == (
        0,
        1,
    )
    assert rows[f"nobody@{ABC}"]["refused"] == 1


def test_domain_reports_hold_only_their_domain(mail_run: MailRun) -> None:
    """abc's report (text, JSON, HTML) and xyz's: each its own foo, nothing else."""
    abc = report_json(mail_run, "--domain", ABC)
    assert [row["account"] for row in abc["accounts"]] == [
        FOO_ABC,
        f"nobody@{ABC}",
    ]
    assert (abc["delivered"], abc["refused"], abc["logins"]) == (1, 1, 1)
    assert abc["retrieved_bytes"] == mail_run.retrieved_bytes
    assert [use["account"] for use in abc["quotas"]] == [FOO_ABC]
    assert abc["quotas"][0]["bytes"] == mail_run.stored_bytes[FOO_ABC]

    xyz = report_json(mail_run, "--domain", XYZ)
    assert [row["account"] for row in xyz["accounts"]] == [FOO_XYZ]
    assert (xyz["delivered"], xyz["refused"], xyz["logins"]) == (1, 0, 0)
    assert xyz["delivered_bytes"] == mail_run.stored_bytes[FOO_XYZ]
    assert xyz["login_failures"] == 1

    page = mail_run.folder / "abc-report.html"
    text = mdmail(mail_run, "report", "--domain", ABC, "--html", str(page))
    assert text.startswith(f"Mail report for {ABC}\n")
    assert "Refused:   1 messages, 0 B" in text
    assert "       1  5.1.1 User unknown" in text
    for output in (text, json.dumps(abc), page.read_text()):
        assert "xyz" not in output


def test_domain_logs_hold_only_their_domain(mail_run: MailRun) -> None:
    """Each domain's mail.log has its deliveries and logins, no line of the other."""
    state = mail_run.config.parent / "state" / "domains"
    abc = (state / ABC / "log" / "mail.log").read_text().splitlines()
    xyz = (state / XYZ / "log" / "mail.log").read_text().splitlines()

    assert abc and xyz
    assert all("domain=abc.example" in line for line in abc)
    assert all("domain=xyz.example" in line for line in xyz)
    assert [line for line in abc if "status=rejected (User unknown)" in line]
    assert [line for line in abc if "login domain=abc.example user=foo" in line]
    assert [line for line in xyz if "status=failed" in line]


def test_trace_from_postfix_smtpd_to_our_mailbox(mail_run: MailRun) -> None:
    """report trace QUEUEID --postfix-log: smtpd, queue, lmtp, then lmtpd's line."""
    queue_id = mail_run.queue_ids[FOO_ABC]
    out = mdmail(
        mail_run,
        *("report", "trace", queue_id, "--postfix-log", str(mail_run.postfix_log)),
    )
    lines = out.splitlines()

    assert lines[0] == f"{queue_id}: SMTP -> queue -> LMTP -> mailbox"
    steps = [re.split(r"\s+", line.strip(), maxsplit=1) for line in lines[1:]]
    stages = [stage for stage, _ in steps]
    assert stages[0] == "SMTP" and "postfix/smtpd: client=" in steps[0][1]
    assert [rest for stage, rest in steps if "postfix/qmgr: from=<" in rest]
    lmtp = [rest for stage, rest in steps if stage == "LMTP"]
    assert len(lmtp) == 1 and f"to=<foo@{ABC}>" in lmtp[0]
    assert "status=sent (250 2.0.0 <foo@abc.example> Saved)" in lmtp[0]
    assert stages[-1] == "mailbox"
    delivered = (
        rf"lmtpd: to=<foo@{ABC}>, domain={ABC}, user=foo, "
        rf"size={mail_run.stored_bytes[FOO_ABC]}, delay=\d+\.\d{{3}}, "
        r"dsn=2\.0\.0, status=sent \(Saved\)"
    )
    assert re.search(delivered + "$", steps[-1][1])
    assert not [rest for _, rest in steps if "xyz" in rest or "nobody" in rest]


def test_trace_of_the_refused_message(mail_run: MailRun) -> None:
    """The unknown user's message: Postfix's bounce and lmtpd's 5.1.1 refusal."""
    queue_id = mail_run.queue_ids[f"nobody@{ABC}"]
    out = mdmail(
        mail_run,
        *("report", "--domain", ABC, "trace", queue_id),
        *("--postfix-log", str(mail_run.postfix_log)),
    )
    assert f"to=<nobody@{ABC}>, " in out and "status=bounced" in out
    assert out.rstrip("\n").endswith(
        f"lmtpd: to=<nobody@{ABC}>, domain={ABC}, user=nobody, dsn=5.1.1, "
        "status=rejected (User unknown)"
    )


def check_charts(page: Page) -> None:
    """Four charts, each drawn on screen with every text inside its own box."""
    charts = page.locator("svg")
    assert [charts.nth(i).get_attribute("aria-label") for i in range(4)] == [
        "Messages delivered and refused",
        "Refusals by reason",
        "Bytes delivered per account",
        "Quota use",
    ]
    assert charts.count() == 4
    for index in range(4):
        chart = charts.nth(index).bounding_box()
        assert chart is not None and 0 < chart["width"] <= PHONE["width"]
        texts = charts.nth(index).locator("text")
        for number in range(texts.count()):
            box = texts.nth(number).bounding_box()
            assert box is not None
            assert box["x"] + box["width"] <= chart["x"] + chart["width"] + 0.5


@pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason="Debian's chromium is not installed"
)
def test_html_reports_in_chromium(mail_run: MailRun) -> None:
    """The server's and abc's HTML reports render their charts and figures."""
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            context = browser.new_context(viewport=PHONE, java_script_enabled=False)
            page = context.new_page()

            page.goto(html_report(mail_run, "server").as_uri())
            assert page.title() == "Mail report for all domains"
            check_charts(page)
            text = page.inner_text("body")
            assert "Delivered\n2\n" in text and "POP3 logins\n1\n1 failed" in text
            assert "5.1.1 User unknown" in text
            for account in (FOO_ABC, FOO_XYZ, f"nobody@{ABC}"):
                assert account in text
            page.screenshot(path=str(OUTPUT / "server-report.png"), full_page=True)

            page.goto(html_report(mail_run, "abc", "--domain", ABC).as_uri())
            assert page.title() == "Mail report for abc.example"
            check_charts(page)
            text = page.inner_text("body")
            assert "Delivered\n1\n" in text and "Refused\n1\n" in text
            assert FOO_ABC in text and "xyz" not in text
            page.screenshot(path=str(OUTPUT / "abc-report.png"), full_page=True)
        finally:
            browser.close()
    for name in ("server-report.png", "abc-report.png"):
        assert (OUTPUT / name).stat().st_size > 0


def html_report(run: MailRun, name: str, *args: str) -> Path:
    """Write the last hour's HTML report with `mdmail report --html`; its path."""
    path = run.folder / f"{name}-report.html"
    mdmail(run, "report", "--last", "1h", "--html", str(path), *args)
    return path
