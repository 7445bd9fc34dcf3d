"""End to end with real POP3 clients: fetchmail, getmail6 and mpop from Debian.

Each client logs in as plain `foo` on 127.0.0.2 (abc.example) and on 127.0.0.3
(xyz.example): the address it dials picks the domain. Transports: plain on the
trusted loopback, STLS, and implicit TLS (POP3S); getmail6 has no STLS code.

How each client checks our test certificate (issued by trustme with the IP
addresses as SANs and no CN):

- mpop checks IP SANs: `tls_trust_file` with the test CA is enough.
- getmail6 checks the chain against `ca_certs` and the server's name or
  address against the SANs (IP SANs too).
- fetchmail matches the name it polls against DNS names and the CN only, never
  an IP SAN ("hostname mismatch" for `poll 127.0.0.2`), and `via` does not
  help: it checks the `poll` name. Here `no sslcertck` with `sslfingerprint`
  (the MD5 of the certificate, as fetchmail prints it) pins the certificate;
  a wrong fingerprint fails the handshake. `poll localhost` with DNS:localhost
  would verify, but it reaches 127.0.0.1, which is no domain's address.

What the clients add to a message, so that the rest is compared byte for byte
with what was delivered: fetchmail prepends one Received field; getmail6
writes its own Return-Path (our messages start with one, so it is the same
line); mpop adds nothing with `received_header off`.
"""

from __future__ import annotations

import enum
import hashlib
import os
import pwd
import shutil
import signal
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest
import trustme

from tests.pop3_process import Pop3Process

CLIENT_DEADLINE = 60.0
# getmail6 delivers as nobody when run as root (see Getmail).
DELIVERY_UID = pwd.getpwnam("nobody").pw_uid if os.geteuid() == 0 else os.geteuid()


@dataclass(frozen=True)
class Mailbox:
    """foo of one domain: the address that selects it, its password and mail."""

    host: str
    address: str
    password: str
    messages: tuple[bytes, ...]


def message(domain: str, number: int, body: bytes) -> bytes:
    """A message as LMTP stores it (LF line ends), Return-Path first."""
    header = (
        "Return-Path: <sender@source.example>\n"
        "From: Sender <sender@source.example>\n"
        f"To: foo@{domain}\n"
        f"Subject: {domain} message {number}\n"
        f"Message-ID: <{number}@{domain}>\n"
        "\n"
    )
    return header.encode() + body


# Lines of one dot, or starting with dots, are stuffed on the wire and must
# come back as they were (RFC 1939 section 3).
DOTS = b"first\n.\n..\n.leading dot\n...\nlast\n"
LARGE = b"".join(b"line %06d of a large body\n" % line for line in range(20_000))
ABC = Mailbox(
    "127.0.0.2",
    "foo@abc.example",
    "abc-pw",
    (
        message("abc.example", 1, DOTS),
        message("abc.example", 2, LARGE),
        message("abc.example", 3, b"short\n"),
    ),
)
XYZ = Mailbox(
    "127.0.0.3",
    "foo@xyz.example",
    "xyz-pw",
    (message("xyz.example", 1, b"only for xyz\n"), message("xyz.example", 2, DOTS)),
)


class Transport(enum.Enum):
    """How the client reaches the server."""

    PLAIN = "plain"
    STLS = "stls"
    POP3S = "pop3s"


@dataclass(frozen=True)
class Target:
    """The running proxy as a client config needs it."""

    server: Pop3Process
    ca: Path
    fingerprint: str

    def port(self, transport: Transport) -> int:
        """The POP3S port for implicit TLS, the plain one otherwise."""
        if transport is Transport.POP3S:
            return self.server.tls_port
        return self.server.port


@dataclass(frozen=True)
class Run:
    """One client run: exit status, output, and the messages it wrote."""

    status: int
    output: str
    fetched: list[bytes]


class Client(Protocol):
    """A POP3 client program driven by an rc file of its own."""

    binary: str
    transports: tuple[Transport, ...]

    def fetch(
        self, target: Target, mailbox: Mailbox, transport: Transport, keep: bool
    ) -> Run:
        """Fetch every message of the mailbox once."""


def run_client(
    command: list[str], env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run a client to its end, or kill its process group at the deadline."""
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=CLIENT_DEADLINE)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{command[0]} ran over {CLIENT_DEADLINE} s:\n{output.decode()}")
    return process.returncode, output.decode(errors="replace")


def write_rc(path: Path, text: str) -> Path:
    """An rc file with a password in it: every client wants mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    return path


def fresh_maildir(path: Path) -> Path:
    """An empty Maildir (tmp/, new/, cur/) the delivering user may write to."""
    shutil.rmtree(path, ignore_errors=True)
    for folder in (path, path / "tmp", path / "new", path / "cur"):
        folder.mkdir(parents=True)
        os.chown(folder, DELIVERY_UID, -1)
    return path


def maildir_messages(maildir: Path) -> list[bytes]:
    """Every message file a client delivered, in no particular order."""
    files = [*(maildir / "new").iterdir(), *(maildir / "cur").iterdir()]
    return [path.read_bytes() for path in files]


class Fetchmail:
    """fetchmail: rc file, an MDA writing one file per message."""

    binary = "fetchmail"
    transports: tuple[Transport, ...] = (
        Transport.PLAIN,
        Transport.STLS,
        Transport.POP3S,
    )

    def __init__(self, folder: Path, outbox: Path) -> None:
        """Its home (pid file, ids) in folder; messages to a Maildir in outbox."""
        self.folder = folder
        self.outbox = outbox

    def fetch(
        self, target: Target, mailbox: Mailbox, transport: Transport, keep: bool
    ) -> Run:
        """`fetchall`, with `keep` or without (then it deletes what it fetched)."""
        home = self.folder / "home"
        home.mkdir(parents=True, exist_ok=True)
        out = fresh_maildir(self.outbox / "fetchmail")
        text = self._rc(target, mailbox, transport, out) + self._mode(keep)
        rc = write_rc(self.folder / "fetchmailrc", text)
        command = [self.binary, "-f", str(rc), "-i", str(home / "ids"), "--nodetach"]
        status, output = run_client(command, {"FETCHMAILHOME": str(home)})
        fetched = [_without_received(data) for data in maildir_messages(out)]
        return Run(status, output, fetched)

    def _rc(
        self, target: Target, mailbox: Mailbox, transport: Transport, out: Path
    ) -> str:
        # The MDA gets each message with LF line ends on its standard input;
        # fetchmail expands % escapes in it, so the path must hold none.
        mda = f"/bin/sh -c 'cat > $(mktemp {out}/new/XXXXXXXX)'"
        lines = [
            "set no syslog",
            "set no bouncemail",
            f"poll {mailbox.host} service {target.port(transport)} protocol pop3"
            " auth password timeout 10",
            f'  user "foo" there with password "{mailbox.password}" is root here',
            f'  mda "{mda}"',
            f"  {self._tls(target, transport)}",
        ]
        return "\n".join(lines) + "\n"

    @staticmethod
    def _mode(keep: bool) -> str:
        """`fetchall` takes seen messages too; without `keep` it deletes them."""
        return "  fetchall keep\n" if keep else "  fetchall\n"

    @staticmethod
    def _tls(target: Target, transport: Transport) -> str:
        """`sslproto ''` stops the STLS it would try; TLS pins the certificate."""
        if transport is Transport.PLAIN:
            return "sslproto ''"
        pinned = (
            f'sslproto "tls1.2+" no sslcertck sslfingerprint "{target.fingerprint}"'
        )
        return f"ssl {pinned}" if transport is Transport.POP3S else pinned


def _without_received(data: bytes) -> bytes:
    """The message without the Received field fetchmail puts in front."""
    assert data.startswith(b"Received: "), data[:200]
    lines = data.split(b"\n")
    rest = 1
    while lines[rest].startswith((b" ", b"\t")):
        rest += 1
    return b"\n".join(lines[rest:])


class Getmail:
    """getmail6: Maildir destination delivered as `nobody` (it refuses root)."""

    binary = "getmail"
    transports: tuple[Transport, ...] = (Transport.PLAIN, Transport.POP3S)

    def __init__(self, folder: Path, outbox: Path) -> None:
        """Its getmaildir in folder; messages to a Maildir in outbox."""
        self.folder = folder
        self.outbox = outbox

    def fetch(
        self, target: Target, mailbox: Mailbox, transport: Transport, keep: bool
    ) -> Run:
        """`read_all`, with `delete` off (keep) or on."""
        home = self.folder / "home"
        home.mkdir(parents=True, exist_ok=True)
        out = fresh_maildir(self.outbox / "getmail")
        text = self._rc(target, mailbox, transport, out)
        rc = write_rc(self.folder / "getmailrc", text + f"delete = {not keep}\n")
        command = [self.binary, "--getmaildir", str(home), "--rcfile", str(rc)]
        status, output = run_client(command)
        return Run(status, output, maildir_messages(out))

    @staticmethod
    def _rc(target: Target, mailbox: Mailbox, transport: Transport, out: Path) -> str:
        secure = transport is Transport.POP3S
        retriever = "SimplePOP3SSLRetriever" if secure else "SimplePOP3Retriever"
        lines = [
            "[retriever]",
            f"type = {retriever}",
            f"server = {mailbox.host}",
            f"port = {target.port(transport)}",
            "username = foo",
            f"password = {mailbox.password}",
            "timeout = 10",
            *([f"ca_certs = {target.ca}"] if secure else []),
            "[destination]",
            "type = Maildir",
            f"path = {out}/",
            # As root, Debian's getmail6 6.18 refuses to deliver, and its
            # child handling can hang for minutes; as nobody both go away.
            *(["user = nobody"] if os.geteuid() == 0 else []),
            "[options]",
            "read_all = true",
            "delivered_to = false",
            "received = false",
        ]
        return "\n".join(lines) + "\n"


class Mpop:
    """mpop: one account per transport, Maildir delivery, UIDLs in a file."""

    binary = "mpop"
    transports: tuple[Transport, ...] = (
        Transport.PLAIN,
        Transport.STLS,
        Transport.POP3S,
    )

    def __init__(self, folder: Path, outbox: Path, only_new: bool = False) -> None:
        """Its UIDL file in folder; messages to a Maildir in outbox."""
        self.folder = folder
        self.outbox = outbox
        self.only_new = only_new

    def fetch(
        self, target: Target, mailbox: Mailbox, transport: Transport, keep: bool
    ) -> Run:
        """`keep on` or `off`; `only_new` as set (off: every message, each run)."""
        out = fresh_maildir(self.outbox / "mpop")
        text = self._rc(target, mailbox, transport, out)
        rc = write_rc(
            self.folder / "mpoprc", text + f"keep {'on' if keep else 'off'}\n"
        )
        command = [self.binary, "-C", str(rc), "-q", transport.value]
        status, output = run_client(command)
        return Run(status, output, maildir_messages(out))

    def _rc(
        self, target: Target, mailbox: Mailbox, transport: Transport, out: Path
    ) -> str:
        lines = [
            f"account {transport.value}",
            f"host {mailbox.host}",
            f"port {target.port(transport)}",
            "user foo",
            f"password {mailbox.password}",
            f"uidls_file {self.folder}/uidls-%U-%H",
            f"delivery maildir {out}",
            "received_header off",
            f"only_new {'on' if self.only_new else 'off'}",
            f"tls {'off' if transport is Transport.PLAIN else 'on'}",
            f"tls_starttls {'on' if transport is Transport.STLS else 'off'}",
            f"tls_trust_file {target.ca}",
            # SASL PLAIN after STLS, USER/PASS otherwise: both login paths.
            f"auth {'plain' if transport is Transport.STLS else 'user'}",
        ]
        return "\n".join(lines) + "\n"


CLIENTS: dict[str, type[Fetchmail | Getmail | Mpop]] = {
    "fetchmail": Fetchmail,
    "getmail": Getmail,
    "mpop": Mpop,
}
PACKAGES = {"fetchmail": "fetchmail", "getmail": "getmail6", "mpop": "mpop"}
# The exit status of a run that found no mail (fetchmail's 1 is PS_NOMAIL).
NO_MAIL = {"fetchmail": 1, "getmail": 0, "mpop": 0}
# How each client reports a refused login: exit status, and a line it prints.
REFUSED = {
    "fetchmail": (3, "Query status=3 (AUTHFAIL)"),
    "getmail": (127, "-ERR [AUTH] Authentication failed"),
    "mpop": (77, "POP3 server message: -ERR [AUTH] Authentication failed"),
}
CASES = [
    pytest.param(name, transport, id=f"{name}-{transport.value}")
    for name, kind in CLIENTS.items()
    for transport in kind.transports
]


def certificate_fingerprint(pem: Path) -> str:
    """MD5 of the leaf certificate, upper-case hex pairs, as fetchmail shows it."""
    text = pem.read_text()
    begin = text.index("-----BEGIN CERTIFICATE-----")
    end = text.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
    digest = hashlib.md5(ssl.PEM_cert_to_DER_cert(text[begin:end])).hexdigest()
    return ":".join(digest[index : index + 2] for index in range(0, 32, 2)).upper()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """One proxy for the module: plain + STLS and POP3S on 127.0.0.2 and .3."""
    folder = tmp_path_factory.mktemp("pop3-clients")
    ca = trustme.CA()
    certificate = ca.issue_cert("pop.test.example", ABC.host, XYZ.host)
    certificate.private_key_and_cert_chain_pem.write_to_path(str(folder / "cert.pem"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    server = Pop3Process(
        folder / "pop3",
        tls=True,
        certificate=str(folder / "cert.pem"),
        # The wrong-password test must not slow the logins of later tests.
        login_delay_base=0.05,
        login_delay_max=0.2,
    )
    server.domains = [
        {"domain": "abc.example", "addresses": [ABC.host]},
        {"domain": "xyz.example", "addresses": [XYZ.host]},
    ]
    for mailbox in (ABC, XYZ):
        server.add_account(mailbox.address, mailbox.password)
    server.start()
    try:
        yield Target(
            server, folder / "ca.pem", certificate_fingerprint(folder / "cert.pem")
        )
    finally:
        server.stop()


@pytest.fixture
def seeded(target: Target) -> Target:
    """The proxy with both mailboxes holding exactly their messages."""
    for mailbox in (ABC, XYZ):
        for path in target.server.stored(mailbox.address):
            path.unlink()
        for data in mailbox.messages:
            target.server.put(mailbox.address, data)
    return target


@pytest.fixture
def outbox() -> Iterator[Path]:
    """Where clients deliver: a folder outside pytest's 0700 tree (for nobody)."""
    with tempfile.TemporaryDirectory(prefix="pop3-outbox-") as folder:
        os.chown(folder, DELIVERY_UID, -1)
        yield Path(folder)


def make_client(name: str, folder: Path, outbox: Path) -> Client:
    """The client by name; the test is skipped if its program is missing."""
    kind = CLIENTS[name]
    if shutil.which(kind.binary) is None:
        pytest.skip(
            f"{kind.binary} is not installed (apt-get install {PACKAGES[name]})"
        )
    client: Client = kind(folder, outbox)
    return client


def assert_fetched(run: Run, mailbox: Mailbox) -> None:
    """The run succeeded and wrote exactly the mailbox's messages."""
    assert run.status == 0, run.output
    assert sorted(run.fetched) == sorted(mailbox.messages), run.output


@pytest.mark.parametrize(("name", "transport"), CASES)
def test_keep_then_delete(
    seeded: Target, tmp_path: Path, outbox: Path, name: str, transport: Transport
) -> None:
    """Each address gives its own foo; keep fetches again, delete empties."""
    server = seeded.server
    for mailbox in (ABC, XYZ):
        client = make_client(name, tmp_path / mailbox.host, outbox)

        assert_fetched(client.fetch(seeded, mailbox, transport, keep=True), mailbox)
        assert_fetched(client.fetch(seeded, mailbox, transport, keep=True), mailbox)
        assert len(server.stored(mailbox.address)) == len(mailbox.messages)

        assert_fetched(client.fetch(seeded, mailbox, transport, keep=False), mailbox)
        assert server.stored(mailbox.address) == []
        empty = client.fetch(seeded, mailbox, transport, keep=True)
        assert (empty.status, empty.fetched) == (NO_MAIL[name], []), empty.output


@pytest.mark.parametrize("name", list(CLIENTS))
def test_other_domains_password_fails(
    seeded: Target, tmp_path: Path, outbox: Path, name: str
) -> None:
    """abc.example's password on xyz.example's address: refused, nothing fetched."""
    client = make_client(name, tmp_path, outbox)
    wrong = Mailbox(XYZ.host, XYZ.address, ABC.password, XYZ.messages)
    run = client.fetch(seeded, wrong, Transport.PLAIN, keep=False)
    status, said = REFUSED[name]
    assert (run.status, said in run.output) == (status, True), run.output
    assert run.fetched == []
    assert len(seeded.server.stored(XYZ.address)) == len(XYZ.messages)


def test_mpop_only_new_fetches_each_message_once(
    seeded: Target, tmp_path: Path, outbox: Path
) -> None:
    """mpop's only_new: UIDLs are stable, so a second run finds only new mail."""
    if shutil.which("mpop") is None:
        pytest.skip("mpop is not installed (apt-get install mpop)")
    client = Mpop(tmp_path, outbox, only_new=True)
    assert_fetched(client.fetch(seeded, ABC, Transport.PLAIN, keep=True), ABC)

    again = client.fetch(seeded, ABC, Transport.PLAIN, keep=True)
    assert (again.status, again.fetched) == (0, []), again.output

    later = message("abc.example", 4, b"arrived later\n")
    seeded.server.put(ABC.address, later)
    newest = client.fetch(seeded, ABC, Transport.PLAIN, keep=True)
    assert (newest.status, newest.fetched) == (0, [later]), newest.output


def test_fetchmail_pins_the_certificate(
    seeded: Target, tmp_path: Path, outbox: Path
) -> None:
    """fetchmail with another certificate's fingerprint stops at the handshake."""
    client = make_client("fetchmail", tmp_path, outbox)
    other = Target(seeded.server, seeded.ca, ":".join(["00"] * 16))
    run = client.fetch(other, ABC, Transport.STLS, keep=True)
    assert (run.status, run.fetched) == (2, []), run.output
    assert "fingerprints do not match" in run.output
