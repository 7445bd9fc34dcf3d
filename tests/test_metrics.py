"""Prometheus metrics: bounded labels, the endpoint, and real servers scraped."""

import re
import smtplib
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import Milter
import pytest
import yaml
from mdmilter.filter import factory
from mdmilter.policy import Policy
from mdmilter.service import listening_here
from Milter.testctx import TestCtx as FakeMta  # renamed: pytest would collect it
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from mdcore.admin import Admin
from mdcore.config import ServerConfig, load_config
from mdcore.domainchoice import DomainRules
from mdcore.errors import ConfigError
from mdcore.exporter import Exporter, start_exporter
from mdcore.layout import StateRoot
from mdcore.metrics import (
    LoginOutcome,
    Metrics,
    RecipientOutcome,
    hosted_in,
)
from mdcore.namespace import Registry
from mdweb.app import create_app
from tests.conftest import SECRET_HASH
from tests.lmtp_process import LmtpProcess, free_port
from tests.lmtp_wire import DEADLINE, MAIL_OK, SENDER, deliveries, wait_until
from tests.milter_process import MilterProcess
from tests.pop3_process import Pop3Process, PopWire
from tests.web_process import WebProcess
from tests.web_site import (
    ABC_HOST,
    FOO_ABC_PASSWORD,
    make_domains,
    site_config,
    write_config,
)

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
RECIPIENTS = "mdmail_lmtp_recipients_total"
POP3_LOGINS = "mdmail_pop3_logins_total"
HOSTED = "abc.example"
MADE_UP = "made-up.example"
POP3_PASSWORD = "abc-pw"
POP3_MESSAGE = b"Subject: metrics\n\nhello\n"
POP3_GREETING = b"+OK pop.test.example POP3 server ready\r\n"
AUTH_FAILED = b"-ERR [AUTH] Authentication failed\r\n"
SIGN_OFF = b"+OK pop.test.example POP3 server signing off\r\n"


def only_abc(domain: str) -> bool:
    """A `known` check that knows abc.example alone."""
    return domain == HOSTED


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    """One sample of the metrics' registry, None if it has never been counted."""
    return metrics.registry.get_sample_value(name, labels)


def scrape(port: int) -> str:
    """GET /metrics from a local endpoint."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=DEADLINE) as reply:
        text: str = reply.read().decode()
        return text


def samples(text: str, name: str) -> dict[tuple[str, str], float]:
    """The values of one sample name in a scrape, by (domain, outcome)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                key = (
                    sample.labels.get("domain", ""),
                    sample.labels.get("outcome", ""),
                )
                found[key] = sample.value
    return found


def domain_labels(text: str) -> set[str]:
    """Every value a `domain` label takes in a scrape."""
    return {
        sample.labels["domain"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if "domain" in sample.labels
    }


# The metrics module on its own.


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (250, RecipientOutcome.DELIVERED),
        (451, RecipientOutcome.DEFERRED),
        (452, RecipientOutcome.DEFERRED),
        (550, RecipientOutcome.REJECTED),
        (552, RecipientOutcome.REJECTED),
    ],
)
def test_recipient_outcome_by_reply_class(code: int, outcome: RecipientOutcome) -> None:
    """2xx delivered, 4xx deferred, 5xx rejected."""
    assert RecipientOutcome.of(code) is outcome


def test_unknown_domain_is_counted_as_dash() -> None:
    """A refusal for a made-up domain counts under "-", never under its name."""
    metrics = Metrics(only_abc)
    metrics.refusal(MADE_UP, RecipientOutcome.REJECTED)
    metrics.refusal("", RecipientOutcome.DEFERRED)
    metrics.refusal(HOSTED, RecipientOutcome.REJECTED)
    assert value(metrics, RECIPIENTS, domain="-", outcome="rejected") == 1
    assert value(metrics, RECIPIENTS, domain="-", outcome="deferred") == 1
    assert value(metrics, RECIPIENTS, domain=HOSTED, outcome="rejected") == 1
    assert value(metrics, RECIPIENTS, domain=MADE_UP, outcome="rejected") is None


def test_labels_stay_bounded_whatever_clients_send() -> None:
    """A thousand made-up domains make one series, and each is checked, not kept."""
    asked: list[str] = []

    def known(domain: str) -> bool:
        asked.append(domain)
        return domain == HOSTED

    metrics = Metrics(known)
    for number in range(1000):
        metrics.login(f"x{number}.example", LoginOutcome.FAILED)
    for _ in range(3):
        metrics.login(HOSTED, LoginOutcome.OK)
    series = {
        tuple(sorted(sample.labels.items()))
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == POP3_LOGINS
    }
    assert series == {
        (("domain", "-"), ("outcome", "failed")),
        (("domain", HOSTED), ("outcome", "ok")),
    }
    assert value(metrics, POP3_LOGINS, domain="-", outcome="failed") == 1000
    # The hosted domain is asked about once, then remembered.
    assert asked.count(HOSTED) == 1


def test_delivery_counts_recipient_octets_and_latency() -> None:
    """Delivered octets count only for delivered recipients; latency by outcome."""
    metrics = Metrics(only_abc)
    metrics.delivery(HOSTED, RecipientOutcome.DELIVERED, 1200, 0.02)
    metrics.delivery(HOSTED, RecipientOutcome.DELIVERED, 1200, 0.03)
    metrics.delivery(HOSTED, RecipientOutcome.DEFERRED, 1200, 0.5)
    assert value(metrics, RECIPIENTS, domain=HOSTED, outcome="delivered") == 2
    assert value(metrics, RECIPIENTS, domain=HOSTED, outcome="deferred") == 1
    assert value(metrics, "mdmail_lmtp_delivered_bytes_total", domain=HOSTED) == 2400
    latency = "mdmail_lmtp_delivery_seconds_count"
    assert value(metrics, latency, outcome="delivered") == 2
    assert value(metrics, latency, outcome="deferred") == 1
    assert (
        value(
            metrics,
            "mdmail_lmtp_delivery_seconds_bucket",
            outcome="delivered",
            le="0.025",
        )
        == 1
    )


def test_pop3_logout_counts_retrieved_and_deleted() -> None:
    """A logout adds its RETR count, octets and removals to the domain's counters."""
    metrics = Metrics(only_abc)
    metrics.logout(HOSTED, 3, 900, 2)
    metrics.logout(HOSTED, 1, 100, 0)
    metrics.logout(MADE_UP, 5, 5, 5)
    assert value(metrics, "mdmail_pop3_retrieved_messages_total", domain=HOSTED) == 4
    assert value(metrics, "mdmail_pop3_retrieved_bytes_total", domain=HOSTED) == 1000
    assert value(metrics, "mdmail_pop3_deleted_messages_total", domain=HOSTED) == 2
    assert value(metrics, "mdmail_pop3_deleted_messages_total", domain="-") == 5


def test_hosted_in_knows_only_hosted_domains(admin: Admin, registry: Registry) -> None:
    """A hosted domain is known; an absent one, an alias, capitals, a bad name not."""
    admin.add_domain(HOSTED)
    admin.add_domain_alias("alias.example", HOSTED)
    known = hosted_in(registry)
    assert known(HOSTED) is True
    assert known(MADE_UP) is False
    assert known("alias.example") is False
    assert known("ABC.example") is False
    assert known("../etc") is False
    assert known("") is False


# The endpoint.


@pytest.fixture
def exporter() -> Iterator[tuple[Exporter, Metrics, int]]:
    """An endpoint on a free loopback port serving a fresh Metrics; closed after."""
    metrics = Metrics(only_abc)
    port = free_port()
    started = start_exporter(
        f"127.0.0.1:{port}", metrics.registry, "test.yaml", "lmtp.metrics_listen"
    )
    assert started is not None
    try:
        yield started, metrics, port
    finally:
        started.close()


def test_empty_listen_starts_nothing() -> None:
    """metrics_listen "" is off."""
    assert start_exporter("", Metrics(only_abc).registry, "f", "k") is None


def test_endpoint_serves_the_counts(exporter: tuple[Exporter, Metrics, int]) -> None:
    """What is counted shows in the scrape at once, with the process figures."""
    endpoint, metrics, port = exporter
    assert endpoint.address == f"127.0.0.1:{port}"
    metrics.web_login(HOSTED, LoginOutcome.OK)
    text = scrape(port)
    assert samples(text, "mdmail_web_logins_total") == {(HOSTED, "ok"): 1.0}
    assert "process_resident_memory_bytes" in text
    assert "_created" not in text


def test_closed_endpoint_refuses(exporter: tuple[Exporter, Metrics, int]) -> None:
    """After close() nothing listens on the port any more."""
    endpoint, _metrics, port = exporter
    endpoint.close()
    with pytest.raises(urllib.error.URLError):
        scrape(port)


def test_taken_port_names_the_key(exporter: tuple[Exporter, Metrics, int]) -> None:
    """A second endpoint on a port in use stops with one line naming the key."""
    _endpoint, metrics, port = exporter
    with pytest.raises(ConfigError) as caught:
        start_exporter(
            f"127.0.0.1:{port}", metrics.registry, "mdmail.yaml", "pop3.metrics_listen"
        )
    assert str(caught.value) == (
        "mdmail.yaml: pop3.metrics_listen: cannot listen: Address already in use"
    )


def test_endpoint_socket_does_not_pass_for_libmilters(
    exporter: tuple[Exporter, Metrics, int],
) -> None:
    """The milter's readiness check sees past the endpoint's listening socket."""
    endpoint, _metrics, _port = exporter
    assert listening_here() is True
    endpoint.close()
    before = listening_here()
    metrics = Metrics(only_abc)
    again = start_exporter(f"127.0.0.1:{free_port()}", metrics.registry, "f", "k")
    assert again is not None
    try:
        assert listening_here(frozenset({again.socket_inode})) is before
    finally:
        again.close()


# Configuration.


@pytest.mark.parametrize("section", ["lmtp", "pop3", "milter", "web"])
@pytest.mark.parametrize("listen", ["127.0.0.1:9124", "[::1]:9124", "localhost:1"])
def test_metrics_listen_accepted(tmp_path: Path, section: str, listen: str) -> None:
    """Every server takes ADDRESS:PORT as its metrics_listen."""
    path = tmp_path / "mdmail.yaml"
    path.write_text(f"{section}:\n  metrics_listen: '{listen}'\n")
    config = load_config(path)
    assert getattr(config, section).metrics_listen == listen
    assert getattr(ServerConfig(), section).metrics_listen == ""


@pytest.mark.parametrize("section", ["lmtp", "pop3", "milter", "web"])
@pytest.mark.parametrize("listen", ["9124", "127.0.0.1:0", "example.net:9124"])
def test_metrics_listen_refused(tmp_path: Path, section: str, listen: str) -> None:
    """Anything but ADDRESS:PORT stops loading with one line naming the key."""
    path = tmp_path / "mdmail.yaml"
    path.write_text(f"{section}:\n  metrics_listen: '{listen}'\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"{path}: {section}.metrics_listen: {listen!r} is not ADDRESS:PORT"
    )


# Components in process: the milter through pymilter's fake MTA, the web page.


def test_milter_decisions_are_counted(admin: Admin, registry: Registry) -> None:
    """Accepted, rejected and passed recipients; a relayed domain is "-"."""
    admin.add_domain(HOSTED)
    admin.add_account(HOSTED, "alice", SECRET_HASH, hashed=True)
    metrics = Metrics(hosted_in(registry))
    saved = Milter.factory
    Milter.factory = factory(Policy(registry, DomainRules(())), metrics)
    try:
        mta = FakeMta()
        mta._setsymval("{i}", "4A1B2C3D")
        assert mta._connect(ip="127.0.0.9") == Milter.CONTINUE
        assert mta._envfrom("<s@x.test>") == Milter.CONTINUE
        assert mta._envrcpt("<alice@abc.example>") == Milter.CONTINUE
        assert mta._envrcpt("<nobody@abc.example>") == Milter.REJECT
        assert mta._envrcpt(f"<someone@{MADE_UP}>") == Milter.CONTINUE
    finally:
        Milter.factory = saved
    name = "mdmail_milter_decisions_total"
    assert value(metrics, name, domain=HOSTED, outcome="accepted") == 1
    assert value(metrics, name, domain=HOSTED, outcome="rejected") == 1
    assert value(metrics, name, domain="-", outcome="passed") == 1
    assert value(metrics, name, domain=MADE_UP, outcome="passed") is None


def test_web_logins_are_counted(tmp_path: Path, root: StateRoot) -> None:
    """A good and a bad password on abc's page count as ok and failed."""
    make_domains(root)
    metrics = Metrics(hosted_in(Registry(root)))
    app = create_app(site_config(tmp_path, root), b"test-key-" * 4, metrics)
    with TestClient(app, base_url=f"http://{ABC_HOST}") as client:
        for password, status in (("wrong", 401), (FOO_ABC_PASSWORD, 200)):
            found = CSRF.search(client.get("/").text)
            assert found is not None
            form = {"csrf": found[1], "user": "foo", "password": password}
            assert client.post("/login", data=form).status_code == status
    name = "mdmail_web_logins_total"
    assert value(metrics, name, domain=HOSTED, outcome="ok") == 1
    assert value(metrics, name, domain=HOSTED, outcome="failed") == 1


# Real server processes, scraped over HTTP.


def test_lmtpd_process_counts_a_delivery(lmtp_server: LmtpProcess) -> None:
    """lmtpd delivers to abc.example, refuses a made-up domain; the scrape says so."""
    port = free_port()
    lmtp_server.lmtp["metrics_listen"] = f"127.0.0.1:{port}"
    lmtp_server.write_config()
    lmtp_server.add_account("foo@abc.example")
    lmtp_server.start()
    assert samples(scrape(port), RECIPIENTS) == {}

    with smtplib.LMTP("127.0.0.1", lmtp_server.port, timeout=DEADLINE) as client:
        assert client.ehlo("client.example")[0] == 250
        assert client.mail(SENDER) == (250, MAIL_OK[4:].encode())
        assert client.rcpt("foo@abc.example") == (
            250,
            b"2.1.5 <foo@abc.example> Recipient OK",
        )
        assert client.rcpt(f"foo@{MADE_UP}") == (
            550,
            f"5.1.2 <foo@{MADE_UP}> Domain not hosted here".encode(),
        )
        assert client.data(b"Subject: hello\r\n\r\nbody\r\n") == (
            250,
            b"2.0.0 <foo@abc.example> Saved",
        )

    text = scrape(port)
    assert samples(text, RECIPIENTS) == {
        (HOSTED, "delivered"): 1.0,
        ("-", "rejected"): 1.0,
    }
    (line,) = deliveries(lmtp_server)
    assert samples(text, "mdmail_lmtp_delivered_bytes_total") == {
        (HOSTED, ""): float(line["size"])
    }
    latency = samples(text, "mdmail_lmtp_delivery_seconds_count")
    assert latency == {("", "delivered"): 1.0}
    assert domain_labels(text) == {HOSTED, "-"}
    assert MADE_UP not in text
    assert lmtp_server.stop() == 0


def test_pop3_process_counts_logins(tmp_path: Path) -> None:
    """A good login (RETR, DELE, QUIT), a bad password and a made-up domain."""
    port = free_port()
    server = Pop3Process(
        tmp_path / "pop3",
        addresses=("127.0.0.1",),
        metrics_listen=f"127.0.0.1:{port}",
        login_delay_base=0.05,
        login_delay_max=0.2,
    )
    server.add_account("foo@abc.example", POP3_PASSWORD)
    server.put("foo@abc.example", POP3_MESSAGE)
    server.start()
    try:
        assert session(server, "foo@abc.example", POP3_PASSWORD).startswith(b"+OK")
        assert session(server, "foo@abc.example", "wrong") == AUTH_FAILED + SIGN_OFF
        assert session(server, f"eve@{MADE_UP}", "guess") == AUTH_FAILED + SIGN_OFF

        deleted = "mdmail_pop3_deleted_messages_total"
        # The logout is counted once the sign-off is sent: wait for it.
        wait_until(lambda: samples(scrape(port), deleted), "the logout's counts")
        text = scrape(port)
        assert samples(text, POP3_LOGINS) == {
            (HOSTED, "ok"): 1.0,
            (HOSTED, "failed"): 1.0,
            ("-", "failed"): 1.0,
        }
        octets = len(POP3_MESSAGE.replace(b"\n", b"\r\n"))
        assert samples(text, "mdmail_pop3_retrieved_messages_total") == {
            (HOSTED, ""): 1.0
        }
        assert samples(text, "mdmail_pop3_retrieved_bytes_total") == {
            (HOSTED, ""): float(octets)
        }
        assert samples(text, deleted) == {(HOSTED, ""): 1.0}
        assert domain_labels(text) == {HOSTED, "-"}
        assert MADE_UP not in text
    finally:
        assert server.stop() == 0


def session(server: Pop3Process, user: str, password: str) -> bytes:
    """Log in; if that works, RETR 1 and DELE 1; then QUIT. The replies after PASS."""
    client = PopWire("127.0.0.1", server.port)
    try:
        assert client.line() == POP3_GREETING
        replies = client.login(user, password)
        if replies.startswith(b"+OK"):
            replies += client.command("RETR 1") + client.listing()
            replies += client.command("DELE 1")
        return replies + client.command("QUIT")
    finally:
        client.close()


def test_milter_process_with_metrics_stops_cleanly(tmp_path: Path) -> None:
    """The milter with an endpoint: READY=1 waits for libmilter, SIGTERM exits 0."""
    root = StateRoot(tmp_path / "state")
    Admin(root).add_domain(HOSTED)
    milter = MilterProcess(tmp_path / "milter", root, [])
    port = free_port()
    config = yaml.safe_load(milter.config_path.read_text())
    config["milter"]["metrics_listen"] = f"127.0.0.1:{port}"
    milter.config_path.write_text(yaml.safe_dump(config))
    milter.start()
    try:
        # Had the endpoint's socket passed for libmilter's, READY=1 could come
        # before the milter port listens.
        socket.create_connection(("127.0.0.1", milter.port), DEADLINE).close()
        text = scrape(port)
        assert "# TYPE mdmail_milter_decisions_total counter" in text
        assert "process_open_fds" in text
    finally:
        assert milter.stop() == 0
    assert "milter: stopped" in milter.log_text()


def test_web_process_counts_a_failed_login(tmp_path: Path, root: StateRoot) -> None:
    """`mdmail serve web` with an endpoint counts a wrong password, exits 0 on TERM."""
    make_domains(root)
    port = free_port()
    web = WebProcess(
        write_config(tmp_path, root, metrics_listen=f"127.0.0.1:{port}"), tmp_path
    )
    web.start()
    try:
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        page = urllib.request.Request(web.url("127.0.0.1"), headers={"Host": ABC_HOST})
        with browser.open(page, timeout=DEADLINE) as reply:
            found = CSRF.search(reply.read().decode())
        assert found is not None
        form = {"csrf": found[1], "user": "foo", "password": "wrong"}
        login = urllib.request.Request(
            web.url("127.0.0.1", "/login"),
            data=urllib.parse.urlencode(form).encode(),
            headers={"Host": ABC_HOST},
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            browser.open(login, timeout=DEADLINE)
        assert caught.value.code == 401
        text = scrape(port)
        assert samples(text, "mdmail_web_logins_total") == {(HOSTED, "failed"): 1.0}
    finally:
        assert web.stop() == 0
