"""Dovecot serves IMAP and POP3 from mdmail's trees through dovecot/mdmail.conf."""

import grp
import imaplib
import itertools
import math
import os
import poplib
import pwd
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pytest

from mdcore.accounts import DISABLED, PENDING
from mdcore.mailbox_reader import iter_crlf, list_messages, open_message
from tests.lmtp_process import LmtpProcess, free_port

SHIPPED_CONFIG = Path(__file__).resolve().parent.parent / "dovecot" / "mdmail.conf"
SHIPPED_STATE_ROOT = "/var/lib/mdmail"
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])
DOVECOT, DOVEADM, DOVECONF = (
    shutil.which(name, path=SEARCH_PATH) for name in ("dovecot", "doveadm", "doveconf")
)
TIMEOUT = 30.0

# foo exists in both domains with its own password; "secret" is also the password
# LmtpProcess.add_account gives (tests/conftest.py SECRET_HASH).
PASSWORD = "secret"
XYZ_PASSWORD = "xyz-secret"
QUOTA_BYTES = 10 * 1024 * 1024
QUOTA_MESSAGES = 100
AUTH_FAILED = b"[AUTHENTICATIONFAILED] Authentication failed."


def _missing_dovecot() -> str | None:
    """Why these tests cannot run here, or None when they can."""
    if DOVECOT is None or DOVEADM is None or DOVECONF is None:
        return "Dovecot is not installed (dovecot-core, dovecot-imapd, dovecot-pop3d)"
    libexec = subprocess.run(
        [DOVECONF, "-c", os.devnull, "-h", "libexec_dir"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    ).stdout.strip()
    for program in ("imap", "pop3"):
        if not Path(libexec, program).exists():
            return f"Dovecot's {program} server is not installed (dovecot-{program}d)"
    if os.geteuid() != 0:
        return "needs root: the trees are handed to nobody for Dovecot's mail processes"
    return None


SKIP_REASON = _missing_dovecot()
pytestmark = pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))


class Dovecot:
    """A private Dovecot instance on loopback, serving one state root."""

    def __init__(self, folder: Path, state_root: Path) -> None:
        self.folder = folder
        self.folder.mkdir(mode=0o755)
        self.config_path = folder / "dovecot.conf"
        self.log_path = folder / "dovecot.log"
        self.base_dir = folder / "run"
        self.imap_port = free_port()
        self.pop3_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._stderr: BinaryIO | None = None
        self._write_config(state_root)

    def _write_config(self, state_root: Path) -> None:
        shipped = SHIPPED_CONFIG.read_text(encoding="utf-8")
        included = self.folder / "mdmail.conf"
        included.write_text(shipped.replace(SHIPPED_STATE_ROOT, str(state_root)))
        nobody = pwd.getpwnam("nobody")
        group = grp.getgrgid(nobody.pw_gid).gr_name
        self.config_path.write_text(
            _INSTANCE_CONFIG.format(
                base_dir=self.base_dir,
                instance=f"mdmail-test-{os.getpid()}",
                log_path=self.log_path,
                imap_port=self.imap_port,
                pop3_port=self.pop3_port,
                included=included,
                user=nobody.pw_name,
                group=group,
            )
        )

    def start(self) -> None:
        """Check the config, start the master and wait for both listeners."""
        self.doveconf_check()
        self._stderr = open(self.folder / "stderr.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [str(DOVECOT), "-F", "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )
        try:
            for port in (self.imap_port, self.pop3_port):
                self._wait_for_port(port)
        except Exception:
            self.stop()
            raise

    def doveconf_check(self) -> None:
        """Fail with Dovecot's own message when it refuses the config."""
        result = subprocess.run(
            [str(DOVECONF), "-c", str(self.config_path), "-n"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert result.returncode == 0, result.stderr

    def _wait_for_port(self, port: int) -> None:
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"dovecot exited: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Dovecot is not listening on {port}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM to the pid in master.pid, then wait for the master to exit."""
        if self.process is None:
            return
        try:
            master = int((self.base_dir / "master.pid").read_text())
            os.kill(master, signal.SIGTERM)
            self.process.wait(TIMEOUT)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait(TIMEOUT)
        self.process = None
        if self._stderr is not None:
            self._stderr.close()

    def doveadm(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run doveadm against this instance."""
        return subprocess.run(
            [str(DOVEADM), "-c", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )

    def log_tail(self) -> str:
        """The end of Dovecot's log, for failure messages."""
        text = self.log_path.read_text() if self.log_path.exists() else ""
        return text[-2000:]


# What a test instance adds around the shipped file: its own folders and ports, no
# TLS, no failure delay, and nobody in place of vmail (no such user here).
_INSTANCE_CONFIG = """\
base_dir = {base_dir}
state_dir = {base_dir}/state
instance_name = {instance}
log_path = {log_path}
protocols = imap pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_failure_delay = 0
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
!include {included}
mail_uid = {user}
mail_gid = {group}
service auth {{
  extra_groups = {group}
}}
"""


@dataclass(frozen=True)
class Site:
    """lmtpd (not running) and Dovecot (running) on one state root."""

    lmtp: LmtpProcess
    dovecot: Dovecot


def _create_accounts(lmtp: LmtpProcess) -> None:
    """Two domains owned by nobody, with active, pending and disabled accounts."""
    nobody = pwd.getpwnam("nobody")
    owner = {"uid": nobody.pw_uid, "gid": nobody.pw_gid}
    admin = lmtp.admin
    admin.add_domain("abc.example", owner)
    admin.add_domain("xyz.example", owner)
    admin.add_account(
        "abc.example",
        "foo",
        PASSWORD,
        quota_bytes=QUOTA_BYTES,
        quota_messages=QUOTA_MESSAGES,
    )
    admin.add_account("xyz.example", "foo", XYZ_PASSWORD)
    admin.add_account("abc.example", "newbie", PASSWORD, state=PENDING)
    admin.add_account("abc.example", "gone", PASSWORD)
    admin.update_account("abc.example", "gone", state=DISABLED)
    lmtp.add_account("pop@abc.example")
    lmtp.add_account("used@abc.example", quota_bytes=QUOTA_BYTES, quota_messages=5)


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    """The module's lmtpd and Dovecot, on trees Dovecot's users can reach."""
    # pytest's tmp folders are 0700 root: nobody (mail processes) and dovecot
    # (auth process) could not reach a state root inside them.
    folder = Path(tempfile.mkdtemp(prefix="mdmail-dovecot-"))
    folder.chmod(0o755)
    lmtp = LmtpProcess(folder / "lmtpd")
    try:
        _create_accounts(lmtp)
        dovecot = Dovecot(folder / "dovecot", lmtp.root.path)
        dovecot.start()
        try:
            yield Site(lmtp, dovecot)
        finally:
            dovecot.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def running(lmtp: LmtpProcess) -> Iterator[LmtpProcess]:
    """lmtpd started for the block and stopped cleanly after it."""
    lmtp.start()
    try:
        yield lmtp
    finally:
        assert lmtp.stop() == 0


def deliver(lmtp: LmtpProcess, address: str, message: bytes) -> None:
    """Hand one message for one recipient to lmtpd over TCP."""
    with smtplib.LMTP("127.0.0.1", lmtp.port, timeout=TIMEOUT) as client:
        client.ehlo("test.example")
        assert client.sendmail("sender@outside.example", [address], message) == {}


def stored_on_wire(maildir: Path) -> list[bytes]:
    """Each message of a Maildir, oldest first, with the CRLFs IMAP sends."""
    contents = []
    for info in list_messages(maildir):
        with open_message(maildir, info.name) as stream:
            contents.append(b"".join(iter_crlf(stream)))
    return contents


@contextmanager
def imap_login(dovecot: Dovecot, address: str) -> Iterator[imaplib.IMAP4]:
    """An IMAP session logged in with the password "secret"."""
    imap = imaplib.IMAP4("127.0.0.1", dovecot.imap_port, timeout=TIMEOUT)
    try:
        imap.login(address, PASSWORD)
        yield imap
    finally:
        imap.logout()


def imap_login_reply(dovecot: Dovecot, address: str, password: str) -> bytes:
    """The tagged reply to one LOGIN, sent from a loopback address of its own."""
    # Dovecot slows every further failed login from an address (its auth penalty,
    # up to 15 s); a fresh source address per attempt keeps the test fast.
    source = (f"127.0.0.{next(_SOURCE_HOSTS)}", 0)
    with socket.create_connection(
        ("127.0.0.1", dovecot.imap_port), TIMEOUT, source_address=source
    ) as connection:
        stream = connection.makefile("rwb")
        stream.readline()
        stream.write(f"a1 LOGIN {address} {password}\r\n".encode())
        stream.flush()
        for line in stream:
            if line.startswith(b"a1 "):
                return bytes(line)
    raise AssertionError("Dovecot closed the connection without a tagged reply")


_SOURCE_HOSTS = itertools.count(2)


def fetch_body(imap: imaplib.IMAP4, number: str) -> bytes:
    """The whole message number, without setting \\Seen."""
    status, data = imap.fetch(number, "(BODY.PEEK[])")
    assert status == "OK"
    item = data[0]
    assert isinstance(item, tuple)
    return item[1]


@pytest.mark.parametrize(
    ("address", "password", "succeeds"),
    [
        ("foo@abc.example", PASSWORD, True),
        ("foo@xyz.example", XYZ_PASSWORD, True),
        ("FOO@ABC.example", PASSWORD, True),
        ("foo@abc.example", XYZ_PASSWORD, False),
        ("foo@xyz.example", PASSWORD, False),
        ("newbie@abc.example", PASSWORD, False),
        ("gone@abc.example", PASSWORD, False),
        ("nobody@abc.example", PASSWORD, False),
        ("foo@nowhere.example", PASSWORD, False),
        ("foo", PASSWORD, False),
    ],
)
def test_doveadm_auth_test(
    site: Site, address: str, password: str, succeeds: bool
) -> None:
    """Each domain's own Argon2 hash decides; pending and disabled never log in."""
    # no-penalty: Dovecot would slow each failure after the first by up to 15 s.
    result = site.dovecot.doveadm(
        "auth", "test", "-x", "no-penalty=yes", address, password
    )

    verdict = "succeeded" if succeeds else "failed"
    assert result.stdout.splitlines()[0] == f"passdb: {address} auth {verdict}"
    assert result.returncode == (0 if succeeds else 77)


@pytest.mark.parametrize("address", ["newbie@abc.example", "gone@abc.example"])
def test_inactive_account_imap_login_looks_like_wrong_password(
    site: Site, address: str
) -> None:
    """IMAP LOGIN of a pending or disabled account: the same NO as a bad password."""
    wrong = imap_login_reply(site.dovecot, "foo@abc.example", XYZ_PASSWORD)
    refused = imap_login_reply(site.dovecot, address, PASSWORD)
    accepted = imap_login_reply(site.dovecot, "foo@abc.example", PASSWORD)

    assert wrong == refused == b"a1 NO " + AUTH_FAILED + b"\r\n"
    assert accepted.startswith(b"a1 OK [CAPABILITY ")
    assert accepted.endswith(b"] Logged in\r\n")


def test_doveadm_user_shows_the_tree_and_quota(site: Site) -> None:
    """doveadm user: home and Maildir in the tree, owner and quota from the line."""
    result = site.dovecot.doveadm("user", "foo@abc.example")

    home = site.lmtp.admin.tree("abc.example").home("foo")
    nobody = pwd.getpwnam("nobody")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "field\tvalue\n"
        f"uid\t{nobody.pw_uid}\n"
        f"gid\t{nobody.pw_gid}\n"
        f"home\t{home}\n"
        "mail\tmaildir:~/Maildir\n"
        f"quota_rule\t*:storage={QUOTA_BYTES}B\n"
        f"quota_rule2\t*:messages={QUOTA_MESSAGES}\n"
    )

    quota = site.dovecot.doveadm("-f", "tab", "quota", "get", "-u", "foo@abc.example")
    assert quota.returncode == 0, quota.stderr
    limits = [line.split("\t")[1:4:2] for line in quota.stdout.splitlines()]
    assert limits == [
        ["Type", "Limit"],
        ["STORAGE", str(QUOTA_BYTES // 1024)],
        ["MESSAGE", str(QUOTA_MESSAGES)],
    ]


def test_lmtp_delivery_read_and_expunged_over_imap(site: Site) -> None:
    """Two messages from lmtpd are fetched over IMAP; expunging one leaves the other."""
    with running(site.lmtp) as lmtp:
        deliver(lmtp, "foo@abc.example", b"Subject: first\r\n\r\nOne.\r\n")
        deliver(lmtp, "foo@abc.example", b"Subject: second\r\n\r\nTwo.\r\n")
    maildir = site.lmtp.maildir("foo@abc.example")
    stored = stored_on_wire(maildir)
    assert len(stored) == 2

    with imap_login(site.dovecot, "foo@abc.example") as imap:
        assert imap.select("INBOX") == ("OK", [b"2"])
        assert [fetch_body(imap, number) for number in ("1", "2")] == stored
        assert imap.store("1", "+FLAGS", "(\\Deleted)")[0] == "OK"
        assert imap.expunge() == ("OK", [b"1"])

    assert stored_on_wire(maildir) == stored[1:]


def test_pop3_uidl_is_uid_and_uidvalidity(site: Site) -> None:
    """POP3 UIDL from Dovecot is %08Xu%08Xv: IMAP UID, then UIDVALIDITY."""
    with running(site.lmtp) as lmtp:
        deliver(lmtp, "pop@abc.example", b"Subject: pop\r\n\r\nBody.\r\n")
    with imap_login(site.dovecot, "pop@abc.example") as imap:
        imap.select("INBOX", readonly=True)
        uidvalidity = int(imap.response("UIDVALIDITY")[1][0])
        assert imap.fetch("1", "(UID)") == ("OK", [b"1 (UID 1)"])

    pop = poplib.POP3("127.0.0.1", site.dovecot.pop3_port, timeout=TIMEOUT)
    try:
        pop.user("pop@abc.example")
        pop.pass_(PASSWORD)
        response, listing, _octets = pop.uidl()
    finally:
        pop.quit()

    # Dovecot 2.3's %X writes lower-case hex digits.
    assert response == b"+OK"
    assert listing == [f"1 {1:08x}{uidvalidity:08x}".encode()]


def test_quota_usage_counted_by_lmtpd_is_dovecots(site: Site) -> None:
    """A message lmtpd delivered counts in Dovecot's quota, over doveadm and IMAP."""
    with running(site.lmtp) as lmtp:
        body = (b"x" * 70 + b"\r\n") * 40
        deliver(lmtp, "used@abc.example", b"Subject: big\r\n\r\n" + body)
    (message,) = list_messages(site.lmtp.maildir("used@abc.example"))
    used_kib = math.ceil(message.size / 1024)  # Dovecot shows KiB, rounded up
    limit_kib = QUOTA_BYTES // 1024

    quota = site.dovecot.doveadm("-f", "tab", "quota", "get", "-u", "used@abc.example")
    assert quota.returncode == 0, quota.stderr
    rows = [line.split("\t")[1:4] for line in quota.stdout.splitlines()[1:]]
    assert rows == [["STORAGE", str(used_kib), str(limit_kib)], ["MESSAGE", "1", "5"]]

    with imap_login(site.dovecot, "used@abc.example") as imap:
        assert imap.getquotaroot("INBOX") == (
            "OK",
            [
                [b'INBOX "User quota"'],
                [f'"User quota" (STORAGE {used_kib} {limit_kib} MESSAGE 1 5)'.encode()],
            ],
        )
