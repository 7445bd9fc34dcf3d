"""Real Postfix and sendmail deliver hosted domains to lmtpd with generated maps."""

import os
import poplib
import smtplib
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mdcore.postfix_maps import MAIN_FRAGMENT, MASTER_FRAGMENT
from mdmail.cli import main
from tests.lmtp_process import LmtpProcess
from tests.mta import (
    PostfixInstance,
    QueueLayout,
    SendmailInstance,
    free_port,
    is_listening,
    wait_until,
)

SENDER = "sender@sender.example"
MESSAGE = b"From: sender@sender.example\r\nSubject: mta\r\n\r\nHello.\r\n"
DEADLINE = 10.0


@dataclass(frozen=True)
class Visit:
    """One message an SMTP sink received, with the address it came from."""

    peer: str
    helo: str
    mail_from: str
    rcpt_tos: tuple[str, ...]


class SinkHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP (RFC 5321) to take a message from Postfix's smtp client."""

    server: "SmtpSink"

    def handle(self) -> None:
        """Answer every command with success; record each message."""
        helo, mail_from = "", ""
        rcpt_tos: list[str] = []
        self.wfile.write(b"220 sink.test ESMTP\r\n")
        while line := self.rfile.readline():
            verb, _, argument = line.decode().strip().partition(" ")
            verb = verb.upper()
            if verb in ("EHLO", "HELO"):
                helo = argument
            elif verb == "MAIL":
                mail_from, rcpt_tos = argument[5:].strip("<>"), []
            elif verb == "RCPT":
                rcpt_tos.append(argument[3:].strip("<>"))
            elif verb == "DATA":
                self.wfile.write(b"354 go ahead\r\n")
                while self.rfile.readline() not in (b".\r\n", b""):
                    pass
                peer = self.client_address[0]
                self.server.record(Visit(peer, helo, mail_from, tuple(rcpt_tos)))
            elif verb == "QUIT":
                self.wfile.write(b"221 2.0.0 bye\r\n")
                return
            self.wfile.write(b"250 2.0.0 ok\r\n")


class SmtpSink(socketserver.ThreadingTCPServer):
    """An SMTP server on one loopback address, in a background thread."""

    daemon_threads = True

    def __init__(self, address: str) -> None:
        super().__init__((address, 0), SinkHandler)
        self.address = address
        self.port: int = self.server_address[1]
        self.visits: list[Visit] = []
        self._changed = threading.Condition()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def record(self, visit: Visit) -> None:
        """Keep a received message and wake up waiters."""
        with self._changed:
            self.visits.append(visit)
            self._changed.notify_all()

    def wait_for(self, count: int) -> list[Visit]:
        """The visits once there are count of them; fail at the deadline."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.visits) >= count, DEADLINE):
                raise TimeoutError(f"SMTP sink got {len(self.visits)} of {count}")
            return list(self.visits)


@pytest.fixture
def smtp_sink() -> Iterator[Callable[[str], SmtpSink]]:
    """Start SMTP sinks on given loopback addresses; stop them afterwards."""
    sinks: list[SmtpSink] = []

    def start(address: str) -> SmtpSink:
        sinks.append(SmtpSink(address))
        return sinks[-1]

    yield start
    for sink in sinks:
        sink.shutdown()
        sink.server_close()


@dataclass
class Generated:
    """What `mdmail mta postfix` wrote, as the test reads it back."""

    folder: Path
    listener_port: int
    main_cf: dict[str, str] = field(default_factory=dict)


class GeneratedPostfix(PostfixInstance):
    """The fixture's Postfix plus the master.cf entries that mdmail generated."""

    extra_master_cf = ""
    extra_listeners: tuple[tuple[str, int], ...] = ()

    def _master_cf(self) -> str:
        return super()._master_cf() + self.extra_master_cf

    def _addresses(self) -> list[tuple[str, int]]:
        return [*super()._addresses(), *self.extra_listeners]


@pytest.fixture
def postfix(
    tmp_path: Path, postfix_queue_layout: QueueLayout
) -> Iterator[GeneratedPostfix]:
    """A Postfix under tmp_path, configured by the test; stopped afterwards."""
    instance = GeneratedPostfix(tmp_path / "postfix", queue_layout=postfix_queue_layout)
    try:
        yield instance
    finally:
        instance.stop()


def host_domains(server: LmtpProcess) -> None:
    """Two domains, each with foo, an outside alias, a catch-all, an alias domain."""
    for address in ("foo@abc.example", "bar@abc.example", "foo@xyz.example"):
        server.add_account(address)
    admin = server.admin
    admin.add_alias("abc.example", "sales", ["foo", "partner@outside.example"])
    admin.add_alias("xyz.example", "@", ["foo", "catchall@outside.example"])
    admin.add_domain_alias("abc-alias.example", "abc.example")
    settings = {"hostname": "mail.abc.example", "outgoing_address": "127.0.0.2"}
    admin.change_settings("abc.example", settings)
    server.write_config(domains=[{"domain": "abc.example", "addresses": ["127.0.0.2"]}])


def mdmail(server: LmtpProcess, *args: str) -> None:
    """Run the mdmail command on the server's config; it must succeed."""
    assert main(["--config", str(server.config_path), *args]) == 0


def generate(postfix: GeneratedPostfix, server: LmtpProcess, *args: str) -> Generated:
    """Generate the Postfix files and point the instance at them."""
    postfix.write_config()  # postconf reads the queue directory from it
    generated = Generated(postfix.folder / "mdmail", free_port("127.0.0.2"))
    mdmail(
        server,
        *("mta", "postfix", "--output", str(generated.folder)),
        *("--postfix-config", str(postfix.config_dir)),
        *("--smtp-port", str(generated.listener_port), *args),
    )
    settle(generated.folder)
    for line in (generated.folder / MAIN_FRAGMENT).read_text().splitlines():
        name, equals, value = line.partition(" = ")
        if equals and not name.startswith("#"):
            generated.main_cf[name] = value
    postfix.extra_main_cf.update(generated.main_cf)
    postfix.extra_master_cf = (generated.folder / MASTER_FRAGMENT).read_text()
    postfix.extra_listeners = (("127.0.0.2", generated.listener_port),)
    return generated


def settle(folder: Path) -> None:
    """Date the files back a minute, as the fixture does with its own.

    Postfix rereads a text table changed within the last second or two until
    it looks settled (it may be half written): every daemon would wait ~2 s.
    """
    settled = time.time() - 60
    for path in folder.iterdir():
        os.utime(path, (settled, settled))


def route_outside(postfix: GeneratedPostfix, sink: SmtpSink) -> None:
    """Send outside.example to the sink: the fixture's own transport, after ours."""
    postfix.transport["outside.example"] = f"smtp:[{sink.address}]:{sink.port}"
    ours = postfix.extra_main_cf["transport_maps"]
    theirs = f"texthash:{postfix.config_dir / 'transport'}"
    postfix.extra_main_cf["transport_maps"] = f"{ours}, {theirs}"


def wait_for_messages(server: LmtpProcess, address: str, count: int) -> None:
    """Wait until the account's Maildir holds count new messages."""
    what = f"{count} message(s) for {address}"
    wait_until(lambda: len(server.messages(address)) >= count, DEADLINE, what)
    assert len(server.messages(address)) == count


@pytest.mark.parametrize(
    ("listener", "map_type"),
    [("inet", "texthash"), ("unix", "lmdb"), ("inet", "hash")],
)
def test_postfix_delivers_each_domain_to_its_own_mailbox(
    postfix: GeneratedPostfix, lmtp_server: LmtpProcess, listener: str, map_type: str
) -> None:
    """foo@abc, foo@xyz and foo@abc-alias land in the two foo Maildirs."""
    host_domains(lmtp_server)
    lmtp = f"unix:{lmtp_server.socket_path}" if listener == "unix" else ""
    generate(
        postfix, lmtp_server, "--map-type", map_type, *(("--lmtp", lmtp) * bool(lmtp))
    )
    lmtp_server.start()
    postfix.start()

    rcpt_tos = ["foo@abc.example", "foo@xyz.example", "foo@abc-alias.example"]
    assert postfix.send(SENDER, rcpt_tos, MESSAGE) == {}

    # foo@abc-alias.example is foo@abc.example: one mailbox, one copy.
    sent = postfix.wait_for_log(r"to=<(\S+)>, relay=\S+, .*status=sent", count=3)
    assert sorted(match[1] for match in sent) == sorted(rcpt_tos)
    wait_for_messages(lmtp_server, "foo@abc.example", 1)
    wait_for_messages(lmtp_server, "foo@xyz.example", 1)


def fetch_subjects(address: str, port: int, password: str) -> list[str]:
    """Log in as plain foo on a domain's own address; the subjects (kept)."""
    client = poplib.POP3(address, port, timeout=DEADLINE)
    try:
        client.user("foo")
        client.pass_(password)
        count, _ = client.stat()
        subjects = []
        for number in range(1, count + 1):
            _, lines, _ = client.retr(number)
            subjects += [
                line[9:].decode() for line in lines if line[:9] == b"Subject: "
            ]
        client.quit()
        return subjects
    finally:
        client.close()


def test_postfix_to_pop3_on_each_domains_address(
    postfix: GeneratedPostfix, lmtp_server: LmtpProcess, tmp_path: Path
) -> None:
    """SMTP into Postfix, LMTP into two spools, POP3 out as plain foo per address."""
    host_domains(lmtp_server)
    lmtp_server.admin.set_password("xyz.example", "foo", "xyz-only-secret")
    generate(postfix, lmtp_server)
    lmtp_server.start()
    postfix.start()
    for domain in ("abc", "xyz"):
        text = f"From: {SENDER}\r\nSubject: for {domain}\r\n\r\nHello.\r\n"
        assert postfix.send(SENDER, [f"foo@{domain}.example"], text.encode()) == {}
    wait_for_messages(lmtp_server, "foo@abc.example", 1)
    wait_for_messages(lmtp_server, "foo@xyz.example", 1)

    # The POP3 proxy on the same state root: one loopback address per domain.
    bindings = [
        {"domain": "abc.example", "addresses": ["127.0.0.2"]},
        {"domain": "xyz.example", "addresses": ["127.0.0.3"]},
    ]
    lmtp_server.write_config(domains=bindings)
    port = free_port("127.0.0.3")
    listen = [
        f"--listen=inet:{address}:{port}" for address in ("127.0.0.2", "127.0.0.3")
    ]
    command = [sys.executable, "-m", "mdmail", "--config", str(lmtp_server.config_path)]
    pop3 = subprocess.Popen([*command, "serve", "pop3", *listen], cwd=tmp_path)
    try:
        both = ("127.0.0.2", "127.0.0.3")
        wait_until(lambda: all(is_listening(a, port) for a in both), DEADLINE, "POP3")
        assert fetch_subjects("127.0.0.2", port, "secret") == ["for abc"]
        assert fetch_subjects("127.0.0.3", port, "xyz-only-secret") == ["for xyz"]
        with pytest.raises(poplib.error_proto, match="AUTH"):
            fetch_subjects("127.0.0.3", port, "secret")
    finally:
        pop3.terminate()
        assert pop3.wait(DEADLINE) == 0


def test_postfix_refuses_unknown_users_itself(
    postfix: GeneratedPostfix, lmtp_server: LmtpProcess
) -> None:
    """relay_recipient_maps: Postfix answers 550 5.1.1 at RCPT; lmtpd never hears."""
    host_domains(lmtp_server)
    generate(postfix, lmtp_server)
    lmtp_server.start()
    postfix.start()

    rcpt_tos = ["nobody@abc.example", "nobody@abc-alias.example", "foo@abc.example"]
    refused = postfix.send(SENDER, rcpt_tos, MESSAGE)

    assert refused == {
        address: (
            550,
            f"5.1.1 <{address}>: Recipient address rejected: "
            "User unknown in relay recipient table".encode(),
        )
        for address in rcpt_tos[:2]
    }
    wait_for_messages(lmtp_server, "foo@abc.example", 1)
    assert "nobody" not in lmtp_server.log_text()


def test_postfix_expands_aliases_with_outside_targets(
    postfix: GeneratedPostfix,
    lmtp_server: LmtpProcess,
    smtp_sink: Callable[[str], SmtpSink],
) -> None:
    """Outside copies go to the sink on 127.0.0.5; local copies to the Maildirs."""
    host_domains(lmtp_server)
    outside = smtp_sink("127.0.0.5")
    generate(postfix, lmtp_server)
    route_outside(postfix, outside)
    lmtp_server.start()
    postfix.start()

    # One message each, so the sink's visits come in a known order.
    for address in ("sales@abc.example", "anyone@xyz.example", "foo@xyz.example"):
        assert postfix.send(SENDER, [address], MESSAGE) == {}
        wait_until(lambda: not postfix.queue_ids(), DEADLINE, "Postfix's queue")

    visits = outside.wait_for(2)
    assert [visit.rcpt_tos for visit in visits] == [
        ("partner@outside.example",),
        ("catchall@outside.example",),
    ]
    # sales kept itself for lmtpd; the catch-all named its mailbox; foo@xyz
    # mapped to itself and escaped the catch-all.
    wait_for_messages(lmtp_server, "foo@abc.example", 1)
    wait_for_messages(lmtp_server, "foo@xyz.example", 2)
    assert "to=<sales@abc.example>, domain=abc.example, user=sales" in (
        lmtp_server.log_text()
    )


def test_postfix_keeps_mail_while_lmtpd_is_down(
    postfix: GeneratedPostfix, lmtp_server: LmtpProcess
) -> None:
    """lmtpd down: Postfix accepts and defers; after a flush each copy arrives once."""
    host_domains(lmtp_server)
    generate(postfix, lmtp_server)
    postfix.start()

    rcpt_tos = ["foo@abc.example", "foo@xyz.example"]
    assert postfix.send(SENDER, rcpt_tos, MESSAGE) == {}
    postfix.wait_for_log(r"to=<foo@xyz.example>, .*status=deferred", count=1)
    assert len(postfix.queue_ids()) == 1

    lmtp_server.start()
    postfix.flush()
    postfix.wait_for_log(r"to=<foo@\w+\.example>, .*status=sent", count=2)
    wait_until(lambda: not postfix.queue_ids(), DEADLINE, "Postfix's queue to empty")
    postfix.flush()
    for address in rcpt_tos:
        wait_for_messages(lmtp_server, address, 1)


def test_postfix_sends_a_domains_mail_from_its_address(
    postfix: GeneratedPostfix,
    lmtp_server: LmtpProcess,
    smtp_sink: Callable[[str], SmtpSink],
) -> None:
    """Mail from abc.example leaves 127.0.0.2 as mail.abc.example; xyz's does not."""
    host_domains(lmtp_server)
    remote = smtp_sink("127.0.0.6")
    generate(postfix, lmtp_server)
    postfix.extra_main_cf["relayhost"] = f"[127.0.0.6]:{remote.port}"
    submission = postfix.add_listener(
        "127.0.0.1", options={"mynetworks": "127.0.0.0/8"}
    )
    postfix.start()

    for sender in ("foo@abc.example", "foo@xyz.example"):
        refused = postfix.send(sender, ["far@remote.example"], MESSAGE, port=submission)
        assert refused == {}
        remote.wait_for(1 if sender.endswith("abc.example") else 2)

    assert [(visit.peer, visit.helo, visit.mail_from) for visit in remote.visits] == [
        ("127.0.0.2", "mail.abc.example", "foo@abc.example"),
        ("127.0.0.1", "mx.eco.test", "foo@xyz.example"),
    ]
    postfix.wait_for_log(r"postfix/smtp-abc\.example/smtp\[\d+\]: .*status=sent")


def test_postfix_domain_listener_speaks_for_its_domain(
    postfix: GeneratedPostfix, lmtp_server: LmtpProcess
) -> None:
    """127.0.0.2 greets as mail.abc.example; accept_other_domains off refuses xyz."""
    host_domains(lmtp_server)
    lmtp_server.admin.change_settings("abc.example", {"accept_other_domains": False})
    generated = generate(postfix, lmtp_server)
    postfix.start()

    with smtplib.SMTP(local_hostname="client.test", timeout=DEADLINE) as smtp:
        banner = smtp.connect("127.0.0.2", generated.listener_port)
        assert banner == (220, b"mail.abc.example ESMTP")
        assert smtp.ehlo()[1].split(b"\n")[0] == b"mail.abc.example"
        assert smtp.mail(SENDER) == (250, b"2.1.0 Ok")
        assert smtp.rcpt("foo@abc-alias.example") == (250, b"2.1.5 Ok")
        assert smtp.rcpt("foo@xyz.example") == (
            554,
            b"5.7.1 <foo@xyz.example>: Recipient address rejected: Access denied",
        )
    postfix.wait_for_log(r"postfix/abc\.example/smtpd\[\d+\]: connect from ")


def test_reload_applies_a_new_account(
    postfix: GeneratedPostfix, lmtp_server: LmtpProcess
) -> None:
    """mdmail mta postfix --reload after a change: Postfix accepts the new address."""
    host_domains(lmtp_server)
    generated = generate(postfix, lmtp_server)
    lmtp_server.start()
    postfix.start()
    refused = postfix.send(SENDER, ["new@abc.example"], MESSAGE)
    assert [code for code, _ in refused.values()] == [550]

    lmtp_server.add_account("new@abc.example")
    mdmail(
        lmtp_server,
        *("mta", "postfix", "--output", str(generated.folder), "--reload"),
        *("--postfix-config", str(postfix.config_dir)),
        *("--smtp-port", str(generated.listener_port)),
    )

    # `postfix reload` returns once master has the signal; an smtpd of the old
    # generation may still take a connection before it quits.
    postfix.wait_for_log(r"postfix/master\[\d+\]: reload ")

    def accepted() -> bool:
        return postfix.send(SENDER, ["new@abc.example"], MESSAGE) == {}

    wait_until(accepted, DEADLINE, "Postfix to accept new@abc.example")
    wait_for_messages(lmtp_server, "new@abc.example", 1)


def test_reload_failure_is_one_line_with_postfixs_reason(
    postfix: GeneratedPostfix,
    lmtp_server: LmtpProcess,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--reload with Postfix stopped: exit 1 and Postfix's own message on one line."""
    host_domains(lmtp_server)
    postfix.prepare()  # configured, with a queue, but not started
    args = ["--config", str(lmtp_server.config_path), "mta", "postfix"]
    args += ["--output", str(postfix.folder / "mdmail"), "--reload"]
    args += ["--postfix-config", str(postfix.config_dir)]

    assert main(args) == 1

    assert capsys.readouterr().err == (
        "mdmail: error: postfix reload failed (exit 1): "
        "postfix/postfix-script: fatal: the Postfix mail system is not running\n"
    )


def configure_sendmail(
    sendmail: SendmailInstance, server: LmtpProcess, lmtp: str
) -> int:
    """Generate the sendmail files, index them, and load them into the instance.

    The fixture keeps its own FEATURE(mailertable) line and aliases file, so those
    two lines of the fragment are adapted; everything else is used as generated.
    """
    folder = sendmail.folder / "mdmail"
    port = free_port("127.0.0.2")
    command = ["mta", "sendmail", "--output", str(folder), "--lmtp", lmtp]
    mdmail(server, *command, "--smtp-port", str(port))
    fragment = (folder / "mdmail.mc").read_text()
    fragment = fragment.replace("/etc/mail/aliases,", f"{sendmail.etc / 'aliases'},")
    sendmail.extra_mc = [
        line for line in fragment.splitlines() if "FEATURE(`mailertable'" not in line
    ]
    for line in (folder / "mailertable").read_text().splitlines()[1:]:
        domain, route = line.split("\t")
        sendmail.mailertable[domain] = route

    sendmail.prepare()  # builds the .cf that makemap reads
    makemap = str(sendmail.root / "usr/libexec/sendmail/makemap")
    mdmail(
        server,
        *(*command, "--smtp-port", str(port)),
        *("--makemap", makemap, "--sendmail-cf", str(sendmail.cf)),
    )
    return port


@pytest.mark.parametrize("listener", ["inet", "unix"])
def test_sendmail_mailertable_routes_both_domains_to_lmtpd(
    sendmail: SendmailInstance, lmtp_server: LmtpProcess, listener: str
) -> None:
    """Generated mailertable and mailers: foo@abc and foo@xyz reach their Maildirs."""
    host_domains(lmtp_server)
    lmtp = {
        "inet": f"inet:127.0.0.1:{lmtp_server.port}",
        "unix": f"unix:{lmtp_server.socket_path}",
    }[listener]
    domain_port = configure_sendmail(sendmail, lmtp_server, lmtp)
    lmtp_server.start()
    sendmail.start()

    assert sendmail.send(SENDER, ["foo@abc.example", "foo@xyz.example"], MESSAGE) == {}
    wait_until(
        lambda: is_listening("127.0.0.2", domain_port), DEADLINE, "DAEMON_OPTIONS"
    )
    refused = sendmail.send(
        SENDER,
        ["foo@abc-alias.example"],
        MESSAGE,
        address="127.0.0.2",
        port=domain_port,
    )
    assert refused == {}

    wait_for_messages(lmtp_server, "foo@abc.example", 2)
    wait_for_messages(lmtp_server, "foo@xyz.example", 1)
    mailer = {"inet": "mdmaillmtptcp", "unix": "mdmaillmtp"}[listener]
    assert f"deliverable: mailer {mailer}, " in sendmail.command(
        "-bv", "foo@xyz.example"
    )


def test_sendmail_virtusertable_expands_outside_aliases(
    sendmail: SendmailInstance, lmtp_server: LmtpProcess
) -> None:
    """sendmail -bv: outside copies leave by esmtp, local ones go to lmtpd."""
    host_domains(lmtp_server)
    lmtp_server.admin.add_alias("abc.example", "ext", ["someone@outside.example"])
    configure_sendmail(sendmail, lmtp_server, f"inet:127.0.0.1:{lmtp_server.port}")

    def verify(address: str) -> list[str]:
        lines = sendmail.command("-bv", address).splitlines()
        return sorted(line for line in lines if "deliverable" in line)

    lmtp = "mailer mdmaillmtptcp, host [127.0.0.1]"
    esmtp = "mailer esmtp, host outside.example"
    assert verify("sales@abc.example") == [
        f"foo@abc.example... deliverable: {lmtp}, user foo@abc.example",
        f"partner@outside.example... deliverable: {esmtp}, "
        "user partner@outside.example",
    ]
    assert verify("ext@abc-alias.example") == [
        f"ext@abc-alias.example... deliverable: {esmtp}, user someone@outside.example",
    ]
    assert verify("anyone@xyz.example") == [
        f"catchall@outside.example... deliverable: {esmtp}, "
        "user catchall@outside.example",
        f"foo@xyz.example... deliverable: {lmtp}, user foo@xyz.example",
    ]
    assert verify("foo@xyz.example") == [
        f"foo@xyz.example... deliverable: {lmtp}, user foo@xyz.example",
    ]


def test_postmap_indexes_new_and_changed_tables_only(
    postfix: GeneratedPostfix, lmtp_server: LmtpProcess
) -> None:
    """--map-type lmdb: postmap builds each table once, then only the changed one."""
    host_domains(lmtp_server)
    postfix.write_config()
    folder = postfix.folder / "mdmail"
    command = [sys.executable, "-m", "mdmail", "--config", str(lmtp_server.config_path)]
    command += ["mta", "postfix", "--output", str(folder), "--map-type", "lmdb"]
    command += ["--postfix-config", str(postfix.config_dir)]

    def run() -> list[str]:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=60, check=False
        )
        assert (done.returncode, done.stderr) == (0, "")
        return [line for line in done.stdout.splitlines() if "indexed" in line]

    tables = ["domains", "transport", "recipients", "virtual", "sender_transport"]
    assert run() == [f"indexed lmdb:{folder / name}" for name in tables]
    lmtp_server.add_account("new@abc.example")
    assert run() == [f"indexed lmdb:{folder / 'recipients'}"]

    query = ["postmap", "-c", str(postfix.config_dir), "-q", "new@abc.example"]
    found = subprocess.run(
        [*query, f"lmdb:{folder / 'recipients'}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert found.stdout == "OK\n"
