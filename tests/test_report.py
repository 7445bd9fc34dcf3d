"""Reports and traces from hand-written log lines, and the `mdmail report` command.

The lines below are in the exact form lmtpd, the POP3 proxy, the web page and the
milter write them (see their log calls), so a change of one of those formats
shows up here.
"""

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mdcore.admin import Admin
from mdcore.config import LogConfig, ServerConfig
from mdcore.layout import StateRoot
from mdcore.logs import LINE_FORMAT, TIME_FORMAT, DomainLogHandler
from mdcore.reports import (
    Stage,
    build_report,
    quota_use,
    render_html,
    render_json,
    render_text,
    trace,
)
from mdcore.reports.build import percentile
from mdcore.reports.events import (
    Delivery,
    DeliveryStatus,
    Login,
    Logout,
    parse_event,
    parse_line,
    read_events,
)
from mdmail.commands.serve import log_root
from mdweb.report import domain_report
from mdweb.selfservice import SelfService
from tests.conftest import SECRET_HASH, deliver_message

ABC, XYZ = "abc.example", "xyz.example"
START = datetime(2026, 12, 3, tzinfo=UTC)
END = START + timedelta(days=1)
SINCE, UNTIL = "2026-12-03T00:00", "2026-12-04T00:00"
TIMEOUT = 60

# What lmtpd, the POP3 proxy, the web page and the milter wrote for abc.example.
ABC_LINES = [
    # The day before: outside the period.
    "2026-12-02T23:59:59 lmtpd[100]: 3ZZZ00001: to=<foo@abc.example>, "
    "domain=abc.example, user=foo, size=99999, delay=9.000, dsn=2.0.0, "
    "status=sent (Saved)",
    # The first second of the period counts.
    "2026-12-03T00:00:00 lmtpd[100]: 4AbC1D2E3F: to=<foo@abc.example>, "
    "domain=abc.example, user=foo, size=1000, delay=0.010, dsn=2.0.0, "
    "status=sent (Saved)",
    "2026-12-03T00:00:00 lmtpd[100]: 4AbC1D2E3F: to=<foo+news@abc.example>, "
    "domain=abc.example, user=foo, size=2000, delay=0.020, dsn=2.0.0, "
    "status=sent (Saved)",
    "2026-12-03T10:15:00 mdmilter[300]: 4AbC1D2E40: milter to=<foo@abc.example>, "
    "domain=abc.example, rule=account, status=accepted",
    "2026-12-03T10:15:01 lmtpd[100]: 4AbC1D2E40: to=<foo@abc.example>, "
    "domain=abc.example, user=foo, size=3000, delay=0.030, dsn=2.0.0, "
    "status=sent (Saved)",
    "2026-12-03T10:15:01 lmtpd[100]: 4AbC1D2E40: to=<sales@abc.example>, "
    "domain=abc.example, user=sales, status=partial (outside targets "
    "partner@outside.example are left to the MTA's alias map)",
    "2026-12-03T10:16:00 lmtpd[100]: 4AbC1D2E41: to=<bar@abc.example>, "
    "domain=abc.example, user=bar, size=500, delay=0.050, dsn=2.0.0, "
    "status=sent (Saved)",
    "2026-12-03T10:17:00 lmtpd[100]: 4AbC1D2E42: to=<foo@abc.example>, "
    "domain=abc.example, user=foo, size=4000, delay=0.400, dsn=2.0.0, "
    "status=sent (Saved)",
    "2026-12-03T11:00:00 lmtpd[100]: 4AbC1D2E43: to=<nobody@abc.example>, "
    "domain=abc.example, user=nobody, dsn=5.1.1, status=rejected (User unknown)",
    "2026-12-03T11:00:05 lmtpd[100]: 4AbC1D2E44: to=<nobody@abc.example>, "
    "domain=abc.example, user=nobody, dsn=5.1.1, status=rejected (User unknown)",
    "2026-12-03T11:30:00 lmtpd[100]: 4AbC1D2E45: to=<bar@abc.example>, "
    "domain=abc.example, user=bar, size=9000, delay=0.100, dsn=5.2.2, "
    "status=bounced (Mailbox full)",
    "2026-12-03T11:31:00 lmtpd[100]: 4AbC1D2E46: to=<foo@abc.example>, "
    "domain=abc.example, user=foo, size=7000, delay=0.100, dsn=4.2.2, "
    "status=deferred (Mailbox full)",
    "2026-12-03T12:00:00 pop3proxy[200]: P1a2b1: login domain=abc.example "
    "user=foo rule=login client=192.0.2.7 local=192.0.2.10 status=ok "
    "method=USER/PASS tls=yes",
    "2026-12-03T12:00:02 pop3proxy[200]: P1a2b1: logout domain=abc.example "
    "user=foo reason=quit top=1/120, retr=2/3100, del=1/4, size=10000",
    "2026-12-03T12:05:00 pop3proxy[200]: P1a2b2: login domain=abc.example "
    "user=foo rule=server-address client=192.0.2.8 local=192.0.2.10 "
    "status=failed method=AUTH PLAIN tls=yes",
    # What a client typed as its user name lands in the line as it is.
    "2026-12-03T12:06:00 pop3proxy[200]: P1a2b3: login domain=abc.example "
    "user=<svg> rule=server-address client=192.0.2.9 local=192.0.2.10 "
    "status=failed method=USER/PASS tls=no",
    "2026-12-03T12:10:00 pop3proxy[200]: P1a2b4: login domain=abc.example "
    "user=bar rule=login client=192.0.2.7 local=192.0.2.10 status=ok "
    "method=USER/PASS tls=yes",
    "2026-12-03T12:10:09 pop3proxy[200]: P1a2b4: logout domain=abc.example "
    "user=bar reason=closed without QUIT top=0/0, retr=0/0, del=0/1, size=500",
    "2026-12-03T12:20:00 mdweb[400]: web: client=192.0.2.7 domain=abc.example "
    "user=boss event=login status=ok",
    "Traceback (most recent call last):",
    # The first second after the period does not count.
    "2026-12-04T00:00:00 lmtpd[100]: 5ZZZ00001: to=<foo@abc.example>, "
    "domain=abc.example, user=foo, size=88888, delay=8.000, dsn=2.0.0, "
    "status=sent (Saved)",
]

# xyz.example has its own foo, with another password and mailbox.
XYZ_LINES = [
    "2026-12-03T10:15:01 lmtpd[100]: 4AbC1D2E40: to=<foo@xyz.example>, "
    "domain=xyz.example, user=foo, size=777, delay=0.700, dsn=2.0.0, "
    "status=sent (Saved)",
    "2026-12-03T13:00:00 lmtpd[100]: 4AbC1D2E50: to=<ghost@xyz.example>, "
    "domain=xyz.example, user=ghost, dsn=5.1.1, status=rejected (User unknown)",
    "2026-12-03T13:05:00 pop3proxy[200]: P1a2c1: login domain=xyz.example "
    "user=foo rule=login client=198.51.100.4 local=192.0.2.11 status=ok "
    "method=USER/PASS tls=yes",
    "2026-12-03T13:05:01 pop3proxy[200]: P1a2c1: logout domain=xyz.example "
    "user=foo reason=quit top=0/0, retr=1/800, del=1/1, size=777",
    "2026-12-03T13:06:00 pop3proxy[200]: P1a2c2: login domain=xyz.example "
    "user=foo rule=login client=198.51.100.4 local=192.0.2.11 status=failed "
    "method=USER/PASS tls=yes",
]

POSTFIX_LINES = [
    "Dec  3 10:15:00 mx postfix/smtpd[10]: 4AbC1D2E40: client=client.test[192.0.2.50]",
    "Dec  3 10:15:00 mx postfix/cleanup[11]: 4AbC1D2E40: message-id=<1@client.test>",
    "Dec  3 10:15:00 mx postfix/qmgr[12]: 4AbC1D2E40: "
    "from=<sender@sender.example>, size=2900, nrcpt=2 (queue active)",
    "Dec  3 10:15:00 mx postfix/smtpd[10]: 4AbC1D2E41: client=client.test[192.0.2.50]",
    "Dec  3 10:15:01 mx postfix/lmtp[13]: 4AbC1D2E40: to=<foo@abc.example>, "
    "relay=127.0.0.1[127.0.0.1]:2400, delay=1.1, delays=1/0/0/0.1, dsn=2.0.0, "
    "status=sent (250 2.0.0 <foo@abc.example> Saved)",
    "Dec  3 10:15:01 mx postfix/qmgr[12]: 4AbC1D2E40: removed",
]

DATA = Path(__file__).parent / "data"


def write_log(admin: Admin, domain: str, lines: list[str]) -> Path:
    """Write the lines as the domain's own log; its path."""
    path = admin.tree(domain).logs / "mail.log"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def store(admin: Admin, address: str, message: bytes) -> None:
    """Put one message into an account's Maildir, as lmtpd does."""
    local, _, domain = address.partition("@")
    deliver_message(admin.tree(domain).maildir(local), address, message)


@pytest.fixture
def hosted(admin: Admin) -> Admin:
    """abc.example (foo with a 10 KiB quota, bar) and xyz.example (its own foo)."""
    admin.add_domain(ABC)
    admin.add_domain(XYZ)
    admin.add_account(ABC, "foo", SECRET_HASH, quota_bytes=10240, hashed=True)
    admin.add_account(ABC, "bar", SECRET_HASH, hashed=True)
    admin.add_account(XYZ, "foo", SECRET_HASH, hashed=True)
    return admin


@pytest.fixture
def logged(hosted: Admin) -> Admin:
    """The hosted domains with their logs written and 2048 bytes in foo@abc."""
    write_log(hosted, ABC, ABC_LINES)
    write_log(hosted, XYZ, XYZ_LINES)
    store(hosted, f"foo@{ABC}", b"Subject: kept\n\n" + b"x" * 2033)
    return hosted


def run(*args: str) -> tuple[int, str, str]:
    """mdmail as its own process; its exit status, stdout and stderr."""
    environment = {k: v for k, v in os.environ.items() if k != "MDMAIL_CONFIG"}
    done = subprocess.run(
        [sys.executable, "-m", "mdmail", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=environment,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


# Reading lines back


def test_parse_line_splits_time_program_and_message() -> None:
    """A line of ours splits in three; a traceback or foreign line gives None."""
    line = parse_line(ABC_LINES[1] + "\n")
    assert line is not None
    assert (line.time, line.program) == (START, "lmtpd")
    assert line.message.startswith("4AbC1D2E3F: to=<foo@abc.example>, ")
    assert parse_line("Traceback (most recent call last):") is None
    assert parse_line("Dec  3 10:15:00 mx postfix/smtpd[10]: 4AbC: client=") is None
    assert parse_line("2026-13-45T99:00:00 lmtpd[1]: x") is None


@pytest.mark.parametrize(
    ("text", "event"),
    [
        (
            ABC_LINES[1],
            Delivery(
                START, "4AbC1D2E3F", ABC, "foo", DeliveryStatus.SENT, 1000, 10.0,
                "2.0.0", "Saved",
            ),
        ),
        (
            ABC_LINES[8],
            Delivery(
                datetime(2026, 12, 3, 11, tzinfo=UTC), "4AbC1D2E43", ABC, "nobody",
                DeliveryStatus.REJECTED, 0, None, "5.1.1", "User unknown",
            ),
        ),
        (
            ABC_LINES[10],
            Delivery(
                datetime(2026, 12, 3, 11, 30, tzinfo=UTC), "4AbC1D2E45", ABC, "bar",
                DeliveryStatus.BOUNCED, 9000, 100.0, "5.2.2", "Mailbox full",
            ),
        ),
        (
            ABC_LINES[11],
            Delivery(
                datetime(2026, 12, 3, 11, 31, tzinfo=UTC), "4AbC1D2E46", ABC, "foo",
                DeliveryStatus.DEFERRED, 7000, 100.0, "4.2.2", "Mailbox full",
            ),
        ),
        (
            ABC_LINES[12],
            Login(datetime(2026, 12, 3, 12, tzinfo=UTC), "P1a2b1", ABC, "foo", "ok"),
        ),
        (
            ABC_LINES[13],
            Logout(
                datetime(2026, 12, 3, 12, 0, 2, tzinfo=UTC), "P1a2b1", ABC, "foo",
                2, 3100, 1,
            ),
        ),
        (
            ABC_LINES[17],
            Logout(
                datetime(2026, 12, 3, 12, 10, 9, tzinfo=UTC), "P1a2b4", ABC, "bar",
                0, 0, 0,
            ),
        ),
        (ABC_LINES[3], None),  # the milter's view of the same message
        (ABC_LINES[5], None),  # outside alias targets: the delivery lines count
        (ABC_LINES[18], None),  # a web login is no POP3 login
    ],
)  # fmt: skip
def test_parse_event(text: str, event: object) -> None:
    """Each kind of line gives its event with every field; others give None."""
    line = parse_line(text)
    assert line is not None
    assert parse_event(line) == event


def test_login_outcomes() -> None:
    """ok and forward are logins that got in; failed, disabled, in-use are not."""
    line = parse_line(ABC_LINES[14])
    assert line is not None
    failed = parse_event(line)
    assert isinstance(failed, Login) and not failed.succeeded
    for outcome, succeeded in [
        ("ok", True),
        ("forward", True),
        ("failed", False),
        ("disabled", False),
        ("in-use", False),
    ]:
        login = Login(START, "P1", ABC, "foo", outcome)
        assert login.succeeded is succeeded


def test_period_is_start_inclusive_end_exclusive(logged: Admin) -> None:
    """Events at the first second count, those before or at the end do not."""
    path = logged.tree(ABC).logs / "mail.log"
    events = list(read_events([path], START, END))
    assert [event.time for event in events][:2] == [START, START]
    assert all(START <= event.time < END for event in events)
    assert len(events) == 15
    late = list(read_events([path], END, END + timedelta(hours=1)))
    assert [event.queue_id for event in late if isinstance(event, Delivery)] == [
        "5ZZZ00001"
    ]


def test_read_events_skips_missing_files(tmp_path: Path) -> None:
    """A domain that logged nothing yet has no log file: no events, no error."""
    assert list(read_events([tmp_path / "mail.log"], START, END)) == []


# Figures


def test_percentile_is_nearest_rank() -> None:
    """p50 of five values is the third; p90 and p99 the fifth; none of nothing."""
    values = [10.0, 20.0, 30.0, 50.0, 400.0]
    assert [percentile(values, share) for share in (0.5, 0.9, 0.99)] == [
        30.0,
        400.0,
        400.0,
    ]
    assert percentile([7.0], 0.5) == 7.0
    assert percentile([], 0.5) is None


def test_domain_report_figures(logged: Admin, root: StateRoot) -> None:
    """abc's report: totals, refusals by reason, latency, per account, quota."""
    report = build_report(root, ABC, START, END)

    assert (report.domain, report.domains) == (ABC, (ABC,))
    assert (report.delivered, report.delivered_bytes) == (5, 10500)
    assert (report.refused, report.refused_bytes, report.deferred) == (3, 9000, 1)
    assert report.refused_by_reason == (
        ("5.1.1 User unknown", 2),
        ("5.2.2 Mailbox full", 1),
        ("4.2.2 Mailbox full", 1),
    )
    assert (report.logins, report.login_failures) == (2, 2)
    assert (report.retrieved, report.retrieved_bytes, report.deleted) == (2, 3100, 1)
    latency = report.latency
    assert (latency.count, latency.p50_ms, latency.p90_ms, latency.p99_ms) == (
        5,
        30.0,
        400.0,
        400.0,
    )


def test_domain_report_per_account(logged: Admin, root: StateRoot) -> None:
    """Each account's own figures; a typed unknown name gets its failures only."""
    accounts = {
        row.account: row for row in build_report(root, ABC, START, END).accounts
    }

    assert sorted(accounts) == [
        "<svg>@abc.example",
        "bar@abc.example",
        "foo@abc.example",
        "nobody@abc.example",
    ]
    foo = accounts["foo@abc.example"]
    assert (foo.delivered, foo.delivered_bytes, foo.deferred) == (4, 10000, 1)
    assert (foo.logins, foo.login_failures) == (1, 1)
    assert (foo.retrieved, foo.retrieved_bytes, foo.deleted) == (2, 3100, 1)
    bar = accounts["bar@abc.example"]
    assert (bar.delivered, bar.delivered_bytes) == (1, 500)
    assert (bar.refused, bar.refused_bytes, bar.logins) == (1, 9000, 1)
    nobody = accounts["nobody@abc.example"]
    assert (nobody.refused, nobody.refused_bytes, nobody.delivered) == (2, 0, 0)
    assert accounts["<svg>@abc.example"].login_failures == 1


def test_timeline_by_hour(logged: Admin, root: StateRoot) -> None:
    """A day is charted by the hour: 24 slices, quiet ones included."""
    timeline = build_report(root, ABC, START, END).timeline
    assert len(timeline) == 24
    assert timeline[0].start == START
    busy = {
        bucket.start.hour: (bucket.delivered, bucket.refused)
        for bucket in timeline
        if bucket.delivered or bucket.refused
    }
    # The deferral is no refusal: it is counted apart, and not charted.
    assert busy == {0: (2, 0), 10: (3, 0), 11: (0, 3)}


def test_timeline_by_day_for_long_periods(logged: Admin, root: StateRoot) -> None:
    """A week is charted by the day."""
    timeline = build_report(root, ABC, START, START + timedelta(days=7)).timeline
    assert [bucket.start for bucket in timeline] == [
        START + timedelta(days=day) for day in range(7)
    ]
    assert (timeline[0].delivered, timeline[0].refused) == (5, 3)
    assert (timeline[1].delivered, timeline[1].refused) == (1, 0)


def test_quota_use(logged: Admin, root: StateRoot) -> None:
    """What each Maildir holds now, against its byte quota."""
    uses = {use.account: use for use in quota_use(root.tree(ABC))}

    foo = uses["foo@abc.example"]
    assert (foo.bytes, foo.messages, foo.limit_bytes) == (2048, 1, 10240)
    assert foo.percent == 20.0
    bar = uses["bar@abc.example"]
    assert (bar.bytes, bar.messages, bar.limit_bytes, bar.percent) == (0, 0, None, None)


def test_same_user_names_stay_in_their_domain(logged: Admin, root: StateRoot) -> None:
    """foo@abc and foo@xyz are two rows of the server report and one each alone."""
    xyz = build_report(root, XYZ, START, END)
    assert [row.account for row in xyz.accounts] == [
        "foo@xyz.example",
        "ghost@xyz.example",
    ]
    assert (xyz.delivered, xyz.delivered_bytes, xyz.refused) == (1, 777, 1)
    assert (xyz.logins, xyz.login_failures, xyz.retrieved_bytes) == (1, 1, 800)
    assert [use.account for use in xyz.quotas] == ["foo@xyz.example"]
    abc = build_report(root, ABC, START, END)
    assert not [row for row in abc.accounts if XYZ in row.account]
    assert XYZ not in render_json(abc) + render_text(abc) + render_html(abc)

    server = build_report(root, None, START, END)
    assert server.domains == (ABC, XYZ)
    assert (server.delivered, server.refused) == (6, 4)
    foos = {
        row.account: row.delivered for row in server.accounts if "foo@" in row.account
    }
    assert foos == {"foo@abc.example": 4, "foo@xyz.example": 1}


def test_a_foreign_line_in_a_domain_log_is_not_counted(
    logged: Admin, root: StateRoot
) -> None:
    """A line naming xyz, copied by hand into abc's log, counts for neither."""
    foreign = XYZ_LINES[0].replace("4AbC1D2E40", "4AbC1D2E99")
    write_log(logged, ABC, [*ABC_LINES, foreign])
    abc = build_report(root, ABC, START, END)
    assert abc.delivered == 5
    assert not [row for row in abc.accounts if XYZ in row.account]
    assert build_report(root, None, START, END).delivered == 6


def test_rotated_logs_are_read_oldest_first(logged: Admin, root: StateRoot) -> None:
    """mail.log.2, mail.log.1, then mail.log; compressed copies are skipped."""
    logs = logged.tree(ABC).logs
    (logs / "mail.log.2").write_text(ABC_LINES[1] + "\n")
    (logs / "mail.log.1").write_text(ABC_LINES[2] + "\n")
    (logs / "mail.log.3.gz").write_bytes(b"\x1f\x8b not text")
    (logs / "mail.log").write_text(ABC_LINES[4] + "\n")
    report = build_report(root, ABC, START, END)
    assert (report.delivered, report.delivered_bytes) == (3, 6000)


# Output


# Verbatim, in a file: its lines are as wide as the report makes them.
ABC_TEXT = (DATA / "report_abc.txt").read_text()


def test_text_output(logged: Admin, root: StateRoot) -> None:
    """The whole text report of abc, as an admin reads it in a terminal."""
    assert render_text(build_report(root, ABC, START, END)) == ABC_TEXT


def test_json_output(logged: Admin, root: StateRoot) -> None:
    """The JSON report holds every figure, times as ISO 8601, quota percent."""
    data = json.loads(render_json(build_report(root, ABC, START, END)))

    assert (data["scope"], data["domain"], data["domains"]) == (ABC, ABC, [ABC])
    assert (data["start"], data["end"]) == (
        "2026-12-03T00:00:00+00:00",
        "2026-12-04T00:00:00+00:00",
    )
    assert (data["delivered"], data["delivered_bytes"]) == (5, 10500)
    assert (data["refused"], data["refused_bytes"], data["deferred"]) == (3, 9000, 1)
    assert data["refused_by_reason"] == [
        {"reason": "5.1.1 User unknown", "count": 2},
        {"reason": "5.2.2 Mailbox full", "count": 1},
        {"reason": "4.2.2 Mailbox full", "count": 1},
    ]
    assert data["latency"] == {
        "count": 5,
        "p50_ms": 30.0,
        "p90_ms": 400.0,
        "p99_ms": 400.0,
    }
    foo = next(row for row in data["accounts"] if row["account"] == f"foo@{ABC}")
    assert foo == {
        "account": "foo@abc.example",
        "delivered": 4,
        "delivered_bytes": 10000,
        "refused": 0,
        "refused_bytes": 0,
        "deferred": 1,
        "logins": 1,
        "login_failures": 1,
        "retrieved": 2,
        "retrieved_bytes": 3100,
        "deleted": 1,
    }
    assert data["quotas"][1] == {
        "account": "foo@abc.example",
        "bytes": 2048,
        "messages": 1,
        "limit_bytes": 10240,
        "limit_messages": None,
        "percent": 20.0,
    }
    assert len(data["timeline"]) == 24
    assert data["timeline"][10] == {
        "start": "2026-12-03T10:00:00+00:00",
        "delivered": 3,
        "refused": 0,
    }


def test_html_output_has_its_charts(logged: Admin, root: StateRoot) -> None:
    """One page, no script: cards, four SVG charts, the accounts table, escaped."""
    page = render_html(build_report(root, ABC, START, END))

    assert page.startswith("<!DOCTYPE html>\n")
    assert "<title>Mail report for abc.example</title>" in page
    assert "<script" not in page.lower() and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )
    assert page.count("<svg ") == 4
    for label in (
        "Messages delivered and refused",
        "Refusals by reason",
        "Bytes delivered per account",
        "Quota use",
    ):
        assert f'aria-label="{label}"' in page
    assert "<span>Delivered</span><b>5</b><span>10.3 KiB</span>" in page
    assert "<span>Delivery p50</span><b>30 ms</b>" in page
    assert "<td>foo@abc.example</td><td>4</td><td>9.8 KiB</td>" in page
    assert "20% of 10.0 KiB" in page
    # A user name typed by a POP3 client is text, never markup.
    assert "&lt;svg&gt;@abc.example" in page


def test_empty_report(hosted: Admin, root: StateRoot) -> None:
    """No log yet: zeros, no latency, and pages that say so."""
    report = build_report(root, XYZ, START, END)
    assert (report.delivered, report.refused, report.logins) == (0, 0, 0)
    assert report.latency.p50_ms is None
    assert "Latency:   no deliveries" in render_text(report)
    page = render_html(report)
    assert "No message was refused or deferred." in page
    assert "No activity in this period." in page


# What a domain admin is shown


def domain_logger(root: StateRoot) -> tuple[logging.Logger, DomainLogHandler]:
    """A logger whose records go only to the domain logs, as the servers write them."""
    handler = DomainLogHandler(root)
    formatter = logging.Formatter(LINE_FORMAT, TIME_FORMAT)
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    logger = logging.getLogger("tests.report.domains")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger, handler


def test_domain_admin_sees_no_line_of_another_domain(
    hosted: Admin, root: StateRoot
) -> None:
    """Both domains' foo get mail and log in; abc's log and report are abc's only."""
    logger, handler = domain_logger(root)
    try:
        for domain in (ABC, XYZ, "other.example"):
            logger.info(
                "Q%d: to=<foo@%s>, domain=%s, user=foo, size=%d, delay=0.005, "
                "dsn=2.0.0, status=sent (Saved)",
                len(domain),
                domain,
                domain,
                len(domain) * 100,
                extra={"domain": domain, "program": "lmtpd"},
            )
            logger.info(
                "P1: login domain=%s user=foo rule=login client=192.0.2.7 "
                "local=192.0.2.10 status=ok method=USER/PASS tls=yes",
                domain,
                extra={"domain": domain, "program": "pop3proxy"},
            )
        logger.info("lmtpd: no domain in this line", extra={"program": "lmtpd"})
    finally:
        logger.removeHandler(handler)
        handler.close()

    log_lines = SelfService(root).domain_log(ABC, 100)
    assert len(log_lines) == 2
    assert all("domain=abc.example" in line for line in log_lines)
    assert not [line for line in log_lines if "xyz" in line or "other" in line]
    page = domain_report(root, ABC)
    assert page is not None and "Mail report for abc.example" in page
    assert "xyz" not in page and "other.example" not in page
    assert "<td>foo@abc.example</td><td>1</td><td>1.1 KiB</td>" in page
    assert "xyz.example user=foo" in (root.tree(XYZ).logs / "mail.log").read_text()
    assert not (root.path / "domains" / "other.example").exists()


def test_domain_logs_can_be_turned_off(tmp_path: Path) -> None:
    """log.domain_logs: false gives the servers no root for domain logs."""
    config = ServerConfig(state_root=tmp_path / "state")
    assert log_root(config) == config.root
    assert log_root(replace(config, log=LogConfig(domain_logs=False))) is None


# Traces


def test_trace_follows_postfix_then_ours(logged: Admin, tmp_path: Path) -> None:
    """One queue id: Postfix's smtpd to lmtp, then our milter and lmtpd; no other."""
    postfix_log = tmp_path / "maillog"
    postfix_log.write_text("".join(line + "\n" for line in POSTFIX_LINES))
    logs = [logged.tree(ABC).logs / "mail.log"]
    steps = trace("4AbC1D2E40", logs, postfix_log)

    assert [(step.stage, step.program) for step in steps] == [
        (Stage.SMTP, "postfix/smtpd"),
        (Stage.QUEUE, "postfix/cleanup"),
        (Stage.QUEUE, "postfix/qmgr"),
        (Stage.LMTP, "postfix/lmtp"),
        (Stage.QUEUE, "postfix/qmgr"),
        (Stage.MILTER, "mdmilter"),
        (Stage.MAILBOX, "lmtpd"),
        (Stage.MAILBOX, "lmtpd"),
    ]
    assert steps[0].time == "Dec  3 10:15:00"
    assert steps[-2].time == "2026-12-03T10:15:01+00:00"
    assert steps[-1].text.startswith("to=<sales@abc.example>, ")


# Verbatim, in a file: its lines are as wide as the report makes them.
TRACE_TEXT = (DATA / "trace_4AbC1D2E40.txt").read_text()


def test_trace_command(logged: Admin, root: StateRoot, tmp_path: Path) -> None:
    """report --domain abc trace QUEUEID --postfix-log: the whole path as text."""
    postfix_log = tmp_path / "maillog"
    postfix_log.write_text("".join(line + "\n" for line in POSTFIX_LINES))
    state = str(root.path)
    options = ["4AbC1D2E40", "--postfix-log", str(postfix_log)]

    before = run("--state-root", state, "report", "--domain", ABC, "trace", *options)
    after = run("--state-root", state, "report", "trace", *options, "--domain", ABC)

    assert before == after == (0, TRACE_TEXT, "")


def test_trace_of_a_domain_reads_its_log_only(logged: Admin, root: StateRoot) -> None:
    """The queue id went to both foos: each domain's trace shows its own line."""
    state = str(root.path)
    status, out, err = run(
        "--state-root", state, "report", "trace", "4AbC1D2E40", "--domain", XYZ
    )
    assert (status, err) == (0, "")
    assert out == (
        "4AbC1D2E40: mailbox\n"
        "  mailbox  2026-12-03T10:15:01+00:00  lmtpd: to=<foo@xyz.example>, "
        "domain=xyz.example, user=foo, size=777, delay=0.700, dsn=2.0.0, "
        "status=sent (Saved)\n"
    )
    everyone = run("--state-root", state, "report", "trace", "4AbC1D2E40")[1]
    assert "foo@xyz.example" in everyone and "foo@abc.example" in everyone


def test_trace_reads_the_server_log_when_configured(
    hosted: Admin, root: StateRoot, tmp_path: Path
) -> None:
    """Without --domain the server log is read: it has refusals of no domain too."""
    server_log = tmp_path / "server.log"
    server_log.write_text(
        "2026-12-03T09:00:00 lmtpd[100]: 4AbC1D2E60: to=<x@elsewhere.example>, "
        "domain=-, user=-, dsn=5.1.2, status=rejected (Domain not hosted here)\n"
    )
    config = tmp_path / "mdmail.yaml"
    config.write_text(f"state_root: {root.path}\nlog:\n  file: {server_log}\n")
    status, out, err = run("--config", str(config), "report", "trace", "4AbC1D2E60")
    assert (status, err) == (0, "")
    assert out.splitlines() == [
        "4AbC1D2E60: mailbox",
        "  mailbox  2026-12-03T09:00:00+00:00  lmtpd: to=<x@elsewhere.example>, "
        "domain=-, user=-, dsn=5.1.2, status=rejected (Domain not hosted here)",
    ]
    unknown = run("--config", str(config), "report", "trace", "NOSUCHID")
    assert unknown == (0, "NOSUCHID: no line of any log names this queue id\n", "")


# The command


def test_report_command_text(logged: Admin, root: StateRoot) -> None:
    """report --domain abc --since --until prints the text report."""
    args = ["--state-root", str(root.path), "report", "--domain", "ABC.example"]
    assert run(*args, "--since", SINCE, "--until", UNTIL) == (0, ABC_TEXT, "")


def test_report_command_json(logged: Admin, root: StateRoot) -> None:
    """--json (after report, or mdmail's own) prints the server report as JSON."""
    period = ["--since", SINCE, "--until", UNTIL]
    state = ["--state-root", str(root.path)]
    status, out, err = run(*state, "report", "--json", *period)
    assert (status, err) == (0, "")
    data = json.loads(out)
    assert (data["scope"], data["domain"]) == ("all domains", None)
    assert (data["delivered"], data["refused"], data["logins"]) == (6, 4, 3)
    assert run(*state, "--json", "report", *period)[1] == out


def test_report_command_last(hosted: Admin, root: StateRoot) -> None:
    """--last 1h counts what happened 30 minutes ago, not 3 hours ago."""
    now = datetime.now(UTC)
    lines = [
        f"{(now - timedelta(minutes=minutes)).strftime(TIME_FORMAT)} lmtpd[100]: "
        f"Q{minutes}: to=<foo@xyz.example>, domain=xyz.example, user=foo, "
        f"size={minutes}, delay=0.001, dsn=2.0.0, status=sent (Saved)"
        for minutes in (30, 180)
    ]
    write_log(hosted, XYZ, lines)
    args = ["--state-root", str(root.path), "--json", "report", "--domain", XYZ]
    for span, expected in (("1h", (1, 30)), ("4h", (2, 210)), ("10m", (0, 0))):
        data = json.loads(run(*args, "--last", span)[1])
        assert (data["delivered"], data["delivered_bytes"]) == expected
    default = json.loads(run(*args)[1])
    assert default["delivered"] == 2
    assert datetime.fromisoformat(default["end"]) - datetime.fromisoformat(
        default["start"]
    ) == timedelta(hours=24)


def test_report_command_html(logged: Admin, root: StateRoot, tmp_path: Path) -> None:
    """--html FILE writes the page and still prints the text report."""
    page = tmp_path / "abc.html"
    args = ["--state-root", str(root.path), "report", "--domain", ABC]
    result = run(*args, "--since", SINCE, "--until", UNTIL, "--html", str(page))
    assert result == (0, ABC_TEXT, "")
    assert page.read_text(encoding="utf-8") == render_html(
        build_report(root, ABC, START, END)
    )


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--domain", "nowhere.example"], "nowhere.example: not a hosted domain"),
        (["--domain", "bad..name"], None),
        (["--last", "5x"], "'5x' is not a span such as 30m, 24h, 7d or 2w"),
        (["--last", "0h"], "'0h' is not a span such as 30m, 24h, 7d or 2w"),
        (["--since", "yesterday"], "'yesterday' is not an ISO 8601 time"),
        (
            ["--since", UNTIL, "--until", SINCE],
            "the period is empty: its start is not before its end",
        ),
        (
            ["--html", "/nonexistent/folder/r.html"],
            "/nonexistent/folder/r.html: cannot write: No such file or directory",
        ),
        (
            ["trace", "Q1", "--postfix-log", "/nonexistent/maillog"],
            "/nonexistent/maillog: no such file",
        ),
        (["--domain", "nowhere.example", "trace", "Q1"], None),
    ],
)
def test_report_bad_input(
    logged: Admin,
    root: StateRoot,
    args: list[str],
    error: str | None,
) -> None:
    """Bad input: exit 1, one `mdmail: error:` line, nothing on stdout."""
    status, out, err = run("--state-root", str(root.path), "report", *args)
    assert (status, out) == (1, "")
    assert err.startswith("mdmail: error: ") and err.count("\n") == 1
    if error is not None:
        assert err == f"mdmail: error: {error}\n"
