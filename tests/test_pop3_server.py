"""End to end through real sockets: POP3 proxy processes, poplib, a raw client."""

from __future__ import annotations

import base64
import poplib
import re
import signal
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.pop3_process import DEADLINE, Pop3Process, PopWire, unstuff

ABC, XYZ, NOWHERE = "127.0.0.2", "127.0.0.3", "127.0.0.1"
ABC_PASSWORD, XYZ_PASSWORD = "abc-pw", "xyz-pw"
ABC_MESSAGE = b"Subject: for abc\n\nhello abc\n.dot line\n"
XYZ_MESSAGE = b"Subject: for xyz\n\nhello xyz\n"
GREETING = b"+OK pop.test.example POP3 server ready\r\n"
SIGN_OFF = b"+OK pop.test.example POP3 server signing off\r\n"
AUTH_FAILED = b"-ERR [AUTH] Authentication failed\r\n"
IN_USE = b"-ERR [IN-USE] Maildrop is in use by another session\r\n"
DISABLED = b"-ERR [SYS/PERM] Mailbox unavailable\r\n"
SHUTTING_DOWN = b"-ERR [SYS/TEMP] Server shutting down, try again later\r\n"
TOO_MANY = b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"
USE_STLS = b"-ERR [AUTH] Plaintext authentication disallowed, use STLS first\r\n"
XYZ_NAME = "pop.xyz.example"


def wire_size(message: bytes) -> int:
    """The size LIST reports for a message stored with LF line ends."""
    return len(message.replace(b"\n", b"\r\n"))


def logged_in(*messages: bytes) -> bytes:
    """The +OK to a login into a maildrop holding these messages."""
    octets = sum(wire_size(message) for message in messages)
    return f"+OK Logged in, {len(messages)} messages ({octets} octets)\r\n".encode()


def retr_reply(message: bytes) -> bytes:
    """RETR's whole reply for a stored message: CRLF, dot-stuffed, terminated."""
    lines = message.replace(b"\n", b"\r\n").split(b"\r\n")[:-1]
    stuffed = [b"." + line if line.startswith(b".") else line for line in lines]
    body = b"".join(line + b"\r\n" for line in stuffed)
    return f"+OK {wire_size(message)} octets\r\n".encode() + body + b".\r\n"


def wait_until(check: Callable[[], bool], what: str) -> None:
    """Poll a condition until it holds or the deadline passes."""
    deadline = time.monotonic() + DEADLINE
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"never happened: {what}")
        time.sleep(0.02)


@dataclass(frozen=True)
class Certificates:
    """A test CA with the default certificate and xyz.example's own."""

    ca: trustme.CA
    default: Path
    xyz: Path

    def client(self) -> ssl.SSLContext:
        """A client context that trusts the test CA."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """Certificates made for the test: the server's, and pop.xyz.example's."""
    folder = tmp_path_factory.mktemp("certificates")
    ca = trustme.CA()
    default = ca.issue_cert("pop.test.example", NOWHERE, ABC, XYZ)
    default.private_key_and_cert_chain_pem.write_to_path(str(folder / "default.pem"))
    xyz = ca.issue_cert(XYZ_NAME)
    xyz.private_key_and_cert_chain_pem.write_to_path(str(folder / "xyz.pem"))
    return Certificates(ca, folder / "default.pem", folder / "xyz.pem")


def two_domains(server: Pop3Process) -> None:
    """foo in abc.example (on 127.0.0.2) and in xyz.example (127.0.0.3)."""
    server.domains = [
        {"domain": "abc.example", "addresses": [ABC]},
        {"domain": "xyz.example", "addresses": [XYZ], "server_names": [XYZ_NAME]},
    ]
    server.add_account("foo@abc.example", ABC_PASSWORD)
    server.add_account("foo@xyz.example", XYZ_PASSWORD)
    server.put("foo@abc.example", ABC_MESSAGE)
    server.put("foo@xyz.example", XYZ_MESSAGE)


@pytest.fixture
def proxies(tmp_path: Path) -> Iterator[Callable[..., Pop3Process]]:
    """Make POP3 proxies with abc.example and xyz.example; all stopped at the end."""
    made: list[Pop3Process] = []

    def make(start: bool = True, name: str = "pop3", **pop3: Any) -> Pop3Process:
        pop3.setdefault("login_delay_base", 0.05)
        pop3.setdefault("login_delay_max", 0.2)
        server = Pop3Process(tmp_path / name, **pop3)
        made.append(server)
        two_domains(server)
        if start:
            server.start()
        return server

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def pop3(proxies: Callable[..., Pop3Process]) -> Pop3Process:
    """A started proxy with the two domains and default limits."""
    return proxies()


def connect(server: Pop3Process, host: str) -> PopWire:
    """A raw client, greeted."""
    client = PopWire(host, server.port)
    assert client.line() == GREETING
    return client


def session_replies(server: Pop3Process, host: str, login: str, password: str) -> bytes:
    """Log in, RETR 1 and QUIT; every reply as the client saw it."""
    client = connect(server, host)
    try:
        replies = client.login(login, password)
        if replies.startswith(b"+OK"):
            replies += client.command("RETR 1") + client.listing()
        return replies + client.command("QUIT")
    finally:
        client.close()


def test_same_user_on_two_addresses_reaches_two_domains(pop3: Pop3Process) -> None:
    """foo on 127.0.0.2 is foo@abc.example, on 127.0.0.3 foo@xyz.example."""
    assert session_replies(pop3, ABC, "foo", ABC_PASSWORD) == (
        logged_in(ABC_MESSAGE) + retr_reply(ABC_MESSAGE) + SIGN_OFF
    )
    assert session_replies(pop3, XYZ, "foo", XYZ_PASSWORD) == (
        logged_in(XYZ_MESSAGE) + retr_reply(XYZ_MESSAGE) + SIGN_OFF
    )
    # Each password works only in its own domain.
    assert session_replies(pop3, ABC, "foo", XYZ_PASSWORD) == AUTH_FAILED + SIGN_OFF
    assert session_replies(pop3, XYZ, "foo", ABC_PASSWORD) == AUTH_FAILED + SIGN_OFF


def test_login_with_domain_works_on_any_address(pop3: Pop3Process) -> None:
    """user@domain and user%domain name the domain whatever address was dialled."""
    assert session_replies(pop3, ABC, "foo@xyz.example", XYZ_PASSWORD) == (
        logged_in(XYZ_MESSAGE) + retr_reply(XYZ_MESSAGE) + SIGN_OFF
    )
    assert session_replies(pop3, NOWHERE, "foo%abc.example", ABC_PASSWORD) == (
        logged_in(ABC_MESSAGE) + retr_reply(ABC_MESSAGE) + SIGN_OFF
    )
    # Never checked against another domain, even the one of the address.
    assert session_replies(pop3, ABC, "foo@xyz.example", ABC_PASSWORD) == (
        AUTH_FAILED + SIGN_OFF
    )


def test_unknown_user_and_wrong_password_get_one_reply(pop3: Pop3Process) -> None:
    """Nothing tells a missing user, domain or mailbox from a wrong password."""
    attempts = [
        (ABC, "foo", "wrong"),
        (ABC, "nobody", ABC_PASSWORD),
        (ABC, "foo@nowhere.example", ABC_PASSWORD),
        (NOWHERE, "foo", ABC_PASSWORD),
    ]
    for host, login, password in attempts:
        assert session_replies(pop3, host, login, password) == AUTH_FAILED + SIGN_OFF


def test_sasl_plain_login(pop3: Pop3Process) -> None:
    """AUTH PLAIN with an initial response logs in like USER/PASS."""
    client = connect(pop3, ABC)
    token = base64.b64encode(f"\0foo\0{ABC_PASSWORD}".encode()).decode()
    assert client.command(f"AUTH PLAIN {token}") == logged_in(ABC_MESSAGE)
    assert client.command("QUIT") == SIGN_OFF
    client.close()


def test_failures_make_the_wait_grow(proxies: Callable[..., Pop3Process]) -> None:
    """Each failure doubles the wait before the -ERR; the reply always comes."""
    server = proxies(login_delay_base=0.2, login_delay_max=3.2)
    client = connect(server, ABC)
    waits = []
    for _ in range(3):
        started = time.monotonic()
        assert client.login("foo", "wrong") == AUTH_FAILED
        waits.append(time.monotonic() - started)
    client.close()
    # Lower bounds only: a slow machine makes waits longer, never shorter.
    assert waits[0] >= 0.2 * 0.9
    assert waits[2] >= 0.8 * 0.9
    assert waits[2] > waits[0]
    # The client address is throttled across connections too.
    started = time.monotonic()
    assert session_replies(server, XYZ, "nobody", "wrong") == AUTH_FAILED + SIGN_OFF
    assert time.monotonic() - started >= 1.6 * 0.9


def test_second_session_on_a_mailbox_is_in_use(pop3: Pop3Process) -> None:
    """RFC 1939 section 8: one session per maildrop; [IN-USE] for the second."""
    first = connect(pop3, ABC)
    assert first.login("foo", ABC_PASSWORD) == logged_in(ABC_MESSAGE)
    assert session_replies(pop3, ABC, "foo", ABC_PASSWORD) == IN_USE + SIGN_OFF
    # The same mailbox under its qualified name is the same maildrop.
    second = connect(pop3, XYZ)
    assert second.login("foo@abc.example", ABC_PASSWORD) == IN_USE
    assert first.command("QUIT") == SIGN_OFF
    assert second.login("foo@abc.example", ABC_PASSWORD) == logged_in(ABC_MESSAGE)
    second.close()
    first.close()


def test_dele_then_quit_removes(pop3: Pop3Process) -> None:
    """DELE marks, QUIT removes (RFC 1939 section 6)."""
    client = connect(pop3, ABC)
    assert client.login("foo", ABC_PASSWORD) == logged_in(ABC_MESSAGE)
    assert client.command("DELE 1") == b"+OK Message 1 deleted\r\n"
    assert len(pop3.stored("foo@abc.example")) == 1
    assert client.command("QUIT") == SIGN_OFF
    assert client.rest() == b""
    assert pop3.stored("foo@abc.example") == []
    wait_until(lambda: "del=1/1" in pop3.log_text(), "the logout line")


def test_dele_then_dropped_connection_removes_nothing(pop3: Pop3Process) -> None:
    """A connection that ends without QUIT removes nothing, and frees the lock."""
    client = connect(pop3, ABC)
    assert client.login("foo", ABC_PASSWORD) == logged_in(ABC_MESSAGE)
    assert client.command("DELE 1") == b"+OK Message 1 deleted\r\n"
    client.close()
    wait_until(lambda: "reason=closed without QUIT" in pop3.log_text(), "logout")
    assert len(pop3.stored("foo@abc.example")) == 1
    assert session_replies(pop3, ABC, "foo", ABC_PASSWORD).startswith(
        logged_in(ABC_MESSAGE)
    )


def uidl_listing(server: Pop3Process) -> bytes:
    """UIDL of foo@abc.example in a session of its own."""
    client = connect(server, ABC)
    assert client.login("foo", ABC_PASSWORD).startswith(b"+OK")
    assert client.command("UIDL") == b"+OK Unique-id listing follows\r\n"
    listing = client.listing()
    assert client.command("QUIT") == SIGN_OFF
    client.close()
    return listing


def test_uidl_is_stable_across_sessions(pop3: Pop3Process) -> None:
    """The same unique-ids in every session, and old ones survive new mail."""
    first = uidl_listing(pop3)
    assert re.fullmatch(rb"1 [\x21-\x7e]{1,70}\r\n\.\r\n", first)
    assert uidl_listing(pop3) == first
    pop3.put("foo@abc.example", b"Subject: later\n\nlater\n")
    later = uidl_listing(pop3)
    assert later.startswith(first[:-3])
    assert later.count(b"\r\n") == 3


def test_list_sizes_equal_retr_octets(pop3: Pop3Process) -> None:
    """RFC 1939 section 11: LIST's size is the octets RETR sends, unstuffed."""
    messages = [
        b"Subject: dots\n\n.\n..\n.x\nend\n",
        b"Subject: lone CR\n\na\rb\n\r\n",
        b"Subject: big\n\n" + b"0123456789abcdef\n" * 20000,
    ]
    for message in messages:
        pop3.put("foo@abc.example", message)
    client = connect(pop3, ABC)
    assert client.login("foo", ABC_PASSWORD).startswith(b"+OK Logged in, 4 messages")
    assert client.command("LIST").startswith(b"+OK 4 messages")
    sizes = [int(line.split()[1]) for line in client.listing().splitlines()[:-1]]
    for number, size in enumerate(sizes, start=1):
        assert client.command(f"RETR {number}") == f"+OK {size} octets\r\n".encode()
        assert len(unstuff(client.listing())) == size
    assert client.command("QUIT") == SIGN_OFF
    client.close()


def test_top_sends_headers_and_lines(pop3: Pop3Process) -> None:
    """TOP n 0 sends the headers and the blank line only."""
    client = connect(pop3, ABC)
    assert client.login("foo", ABC_PASSWORD).startswith(b"+OK")
    assert client.command("TOP 1 0") == b"+OK Top of message follows\r\n"
    assert client.listing() == b"Subject: for abc\r\n\r\n.\r\n"
    assert client.command("QUIT") == SIGN_OFF
    client.close()


def test_pipelined_commands_run_in_order(pop3: Pop3Process) -> None:
    """RFC 2449 section 6.6: commands sent in one write are answered in order."""
    client = connect(pop3, ABC)
    client.send(f"USER foo\r\nPASS {ABC_PASSWORD}\r\nSTAT\r\nQUIT\r\n".encode())
    size = wire_size(ABC_MESSAGE)
    assert client.rest() == (
        b"+OK Send PASS\r\n"
        + logged_in(ABC_MESSAGE)
        + f"+OK 1 {size}\r\n".encode()
        + SIGN_OFF
    )


def test_disabled_and_pending_accounts_cannot_log_in(pop3: Pop3Process) -> None:
    """The right password of a disabled account gets [SYS/PERM]; a wrong one [AUTH]."""
    pop3.add_account("off@abc.example", "off-pw", state="disabled")
    pop3.add_account("new@abc.example", "new-pw", state="pending")
    assert session_replies(pop3, ABC, "off", "off-pw") == DISABLED + SIGN_OFF
    assert session_replies(pop3, ABC, "new", "new-pw") == DISABLED + SIGN_OFF
    assert session_replies(pop3, ABC, "off", "wrong") == AUTH_FAILED + SIGN_OFF
    wait_until(lambda: "status=disabled" in pop3.log_text(), "the login line")


def test_sessions_per_client_are_limited(proxies: Callable[..., Pop3Process]) -> None:
    """Past max_sessions_per_client a client gets [SYS/TEMP] and is closed."""
    server = proxies(max_sessions_per_client=2)
    held: list[PopWire] = []
    # The start-up probes may still hold a slot for a moment: wait them out.
    wait_until(lambda: _hold(server, held, 2), "two sessions at once")
    refused = PopWire(ABC, server.port)
    assert refused.rest() == TOO_MANY
    refused.close()
    held.pop().close()
    wait_until(lambda: _hold(server, held, 2), "a free session slot")
    for client in held:
        client.close()


def _hold(server: Pop3Process, held: list[PopWire], count: int) -> bool:
    """Open sessions up to `count` greeted ones; False (and close) if refused."""
    while len(held) < count:
        client = PopWire(ABC if len(held) % 2 else XYZ, server.port)
        held.append(client)
        if client.line() != GREETING:
            for opened in held:
                opened.close()
            held.clear()
            return False
    return True


def test_idle_session_is_logged_out(proxies: Callable[..., Pop3Process]) -> None:
    """RFC 1939 section 3: the autologout timer closes without a reply."""
    server = proxies(idle_timeout=1)
    client = connect(server, ABC)
    assert client.login("foo", ABC_PASSWORD) == logged_in(ABC_MESSAGE)
    assert client.command("DELE 1") == b"+OK Message 1 deleted\r\n"
    assert client.rest() == b""
    client.close()
    assert len(server.stored("foo@abc.example")) == 1


def test_login_and_logout_are_logged(pop3: Pop3Process) -> None:
    """One line per login and logout, in the server log and the domain's own."""
    session_replies(pop3, ABC, "foo", ABC_PASSWORD)
    session_replies(pop3, XYZ, "foo", "wrong-secret")
    wait_until(lambda: "status=failed" in pop3.log_text(), "the failed login")
    wait_until(lambda: " logout " in pop3.log_text(), "the logout line")
    text = pop3.log_text()
    login = re.search(
        r"login domain=abc\.example user=foo rule=server-address "
        r"client=127\.0\.0\.\d+ local=127\.0\.0\.2 status=ok method=USER/PASS tls=no",
        text,
    )
    assert login is not None, text
    size = wire_size(ABC_MESSAGE)
    logout = (
        f"logout domain=abc.example user=foo reason=quit "
        f"top=0/0, retr=1/{size}, del=0/1, size={size}"
    )
    assert logout in text
    assert "login domain=xyz.example user=foo rule=server-address" in text
    assert ABC_PASSWORD not in text and "wrong-secret" not in text
    assert logout in pop3.domain_log("abc.example")
    assert "status=failed" in pop3.domain_log("xyz.example")
    assert "abc.example" not in pop3.domain_log("xyz.example")


def test_stls_then_login(
    proxies: Callable[..., Pop3Process], certificates: Certificates
) -> None:
    """No password before STLS from an untrusted client; after it, login works."""
    server = proxies(
        start=False, trusted_networks=[], certificate=str(certificates.default)
    )
    server.start()
    client = connect(server, ABC)
    assert client.command("CAPA") == b"+OK Capability list follows\r\n"
    capabilities = client.listing()
    assert b"STLS\r\n" in capabilities and b"USER\r\n" not in capabilities
    assert client.command("USER foo") == USE_STLS
    client.starttls(certificates.client(), ABC)
    assert client.command("CAPA") == b"+OK Capability list follows\r\n"
    capabilities = client.listing()
    assert b"USER\r\n" in capabilities and b"STLS\r\n" not in capabilities
    assert client.login("foo", ABC_PASSWORD) == logged_in(ABC_MESSAGE)
    assert client.command("QUIT") == SIGN_OFF
    client.close()
    wait_until(lambda: "tls=yes" in server.log_text(), "the login line")


def test_nothing_sent_before_the_handshake_runs_after_it(
    proxies: Callable[..., Pop3Process], certificates: Certificates
) -> None:
    """RFC 2595 section 4: commands sent in the clear after STLS are dropped."""
    server = proxies(certificate=str(certificates.default))
    client = connect(server, ABC)
    client.send(b"STLS\r\nCAPA\r\n")
    client.handshake(certificates.client(), ABC)
    client.send(b"QUIT\r\n")
    assert client.rest() == SIGN_OFF
    client.close()


def test_pop3s_implicit_tls(
    proxies: Callable[..., Pop3Process], certificates: Certificates
) -> None:
    """POP3S: TLS from the first octet; poplib logs in by the server address."""
    server = proxies(tls=True, certificate=str(certificates.default))
    client = poplib.POP3_SSL(
        ABC, server.tls_port, context=certificates.client(), timeout=DEADLINE
    )
    try:
        assert client.getwelcome() == GREETING.rstrip()
        client.user("foo")
        assert client.pass_(ABC_PASSWORD) == logged_in(ABC_MESSAGE).rstrip()
        _, lines, _ = client.retr(1)
        assert b"\r\n".join(lines) + b"\r\n" == ABC_MESSAGE.replace(b"\n", b"\r\n")
    finally:
        client.quit()


def test_sni_picks_the_domain_and_its_certificate(
    proxies: Callable[..., Pop3Process], certificates: Certificates
) -> None:
    """On an address of no domain, the TLS server name picks xyz and its cert."""
    server = proxies(start=False, tls=True, certificate=str(certificates.default))
    server.domains[1]["certificate"] = str(certificates.xyz)
    server.start()
    # The client checks the name: only xyz.example's certificate carries it.
    client = PopWire(NOWHERE, server.tls_port, certificates.client(), XYZ_NAME)
    assert client.line() == GREETING
    assert client.login("foo", XYZ_PASSWORD) == logged_in(XYZ_MESSAGE)
    assert client.command("QUIT") == SIGN_OFF
    client.close()
    # The same over STLS on the plain port.
    client = connect(server, NOWHERE)
    client.starttls(certificates.client(), XYZ_NAME)
    assert client.login("foo", XYZ_PASSWORD) == logged_in(XYZ_MESSAGE)
    client.close()
    # Without the name, the default certificate and no domain.
    client = PopWire(NOWHERE, server.tls_port, certificates.client(), NOWHERE)
    assert client.line() == GREETING
    assert client.login("foo", XYZ_PASSWORD) == AUTH_FAILED
    client.close()
    wait_until(lambda: "rule=server-name" in server.log_text(), "the login line")


def test_forwarding_to_another_proxy(tmp_path: Path) -> None:
    """A proxy on 127.0.0.2 relays xyz.example's logins to the proxy on 127.0.0.3."""
    remote = Pop3Process(tmp_path / "remote", addresses=(XYZ,))
    remote.domains = [{"domain": "xyz.example", "addresses": [XYZ]}]
    remote.add_account("foo@xyz.example", XYZ_PASSWORD)
    remote.put("foo@xyz.example", XYZ_MESSAGE)
    front = Pop3Process(tmp_path / "front", addresses=(ABC,))
    front.domains = [
        {"domain": "abc.example", "addresses": [ABC]},
        {"domain": "xyz.example", "forward_to": f"{XYZ}:{remote.port}"},
    ]
    front.add_account("foo@abc.example", ABC_PASSWORD)
    try:
        remote.start()
        front.start()
        _check_forwarding(front, remote)
    finally:
        front.stop()
        remote.stop()


def _check_forwarding(front: Pop3Process, remote: Pop3Process) -> None:
    assert session_replies(front, ABC, "foo@xyz.example", XYZ_PASSWORD) == (
        logged_in(XYZ_MESSAGE) + retr_reply(XYZ_MESSAGE) + SIGN_OFF
    )
    assert session_replies(front, ABC, "foo@xyz.example", "wrong") == (
        AUTH_FAILED + SIGN_OFF
    )
    # Pipelined commands after the login reach the remote too, in order.
    client = connect(front, ABC)
    token = base64.b64encode(f"\0foo@xyz.example\0{XYZ_PASSWORD}".encode())
    client.send(b"AUTH PLAIN " + token + b"\r\nDELE 1\r\nQUIT\r\n")
    assert client.rest() == (
        logged_in(XYZ_MESSAGE) + b"+OK Message 1 deleted\r\n" + SIGN_OFF
    )
    assert remote.stored("foo@xyz.example") == []
    wait_until(lambda: "forward=" in front.log_text(), "the forward log line")
    assert "login domain=xyz.example user=foo rule=login" in (remote.log_text())


def test_sigterm_closes_sessions_and_exits(pop3: Pop3Process) -> None:
    """SIGTERM: idle sessions get [SYS/TEMP], nothing marked is removed, exit 0."""
    client = connect(pop3, ABC)
    assert client.login("foo", ABC_PASSWORD) == logged_in(ABC_MESSAGE)
    assert client.command("DELE 1") == b"+OK Message 1 deleted\r\n"
    started = time.monotonic()
    assert pop3.stop() == 0
    assert time.monotonic() - started < DEADLINE
    assert client.rest() == SHUTTING_DOWN
    client.close()
    assert len(pop3.stored("foo@abc.example")) == 1


def test_sighup_reloads_the_domain_rules(pop3: Pop3Process) -> None:
    """SIGHUP reads the config again: a new address binding takes effect."""
    assert session_replies(pop3, NOWHERE, "foo", ABC_PASSWORD) == AUTH_FAILED + SIGN_OFF
    pop3.domains[0]["addresses"] = [ABC, NOWHERE]
    pop3.write_config()
    pop3.signal(signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in pop3.log_text(), "the reload")
    assert session_replies(pop3, NOWHERE, "foo", ABC_PASSWORD).startswith(
        logged_in(ABC_MESSAGE)
    )
