"""A real Postfix and a real sendmail on loopback, as pytest fixtures."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import shutil
import signal
import smtplib
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import pytest

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
COMMAND_TIMEOUT = 60.0
POLL_INTERVAL = 0.02

POSTFIX_MASTER = Path("/usr/lib/postfix/sbin/master")
POSTFIX_COMMANDS = ("postfix", "postconf", "postqueue", "postsuper")
QUEUE_NAMES = ("maildrop", "incoming", "active", "deferred", "hold")

SENDMAIL_CACHE = Path("/var/cache/mdmail-tests/sendmail")
SENDMAIL_PACKAGES = ("sendmail-bin", "sendmail-cf", "sendmail-base")
SENDMAIL_BINARY = Path("usr/libexec/sendmail/sendmail")
SENDMAIL_TOOLS = ("apt-get", "dpkg", "m4", "unshare", "hostname")

Refused = dict[str, tuple[int, bytes]]


class MtaError(RuntimeError):
    """An MTA did not start, stop or run a command as expected; carries its log."""


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port free on `address` right now."""
    with socket.socket() as probe:
        probe.bind((address, 0))
        port: int = probe.getsockname()[1]
        return port


def is_listening(address: str, port: int) -> bool:
    """Whether a TCP socket listens on address:port (no probe session in the logs)."""
    wanted = f"{socket.htonl(int.from_bytes(socket.inet_aton(address))):08X}:{port:04X}"
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return any(row[1] == wanted and row[3] == "0A" for row in rows)


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `check` until it holds; raise TimeoutError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL_INTERVAL)


def wait_for_text(
    read: Callable[[], str], pattern: str, timeout: float, count: int
) -> list[re.Match[str]]:
    """Poll `read()` until `pattern` matches `count` times; return the matches."""
    regex = re.compile(pattern, re.MULTILINE)
    found: list[re.Match[str]] = []

    def enough() -> bool:
        found[:] = list(regex.finditer(read()))
        return len(found) >= count

    try:
        wait_until(enough, timeout, f"{count} x /{pattern}/")
    except TimeoutError as error:
        raise TimeoutError(f"{error}; the log so far:\n{read()}") from None
    return found


def read_text(path: Path) -> str:
    """A log file's text so far, or '' before it exists."""
    return path.read_text(errors="replace") if path.exists() else ""


def run_command(args: list[str], what: str, **options: object) -> str:
    """Run a command to completion; raise MtaError with its output if it fails."""
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, **options
    )  # type: ignore[call-overload]
    if result.returncode != 0:
        raise MtaError(
            f"{what}: {' '.join(args)} exited {result.returncode}\n"
            f"{result.stdout}{result.stderr}"
        )
    output: str = result.stdout
    return output


def terminal_output(args: list[str]) -> str:
    """Run a command on a pseudo-terminal and return what it printed.

    Postfix tools print their errors only when stderr is a terminal; without
    one, `postfix check` exits 1 and says nothing.
    """
    if shutil.which("script") is None:
        return ""
    script = ["script", "-qec", shlex.join(args), "/dev/null"]
    result = subprocess.run(
        script, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
    )
    return result.stdout


class Daemon:
    """A foreground MTA process in its own process group, stopped with its children."""

    def __init__(self, args: list[str], output: Path) -> None:
        """Start `args` in a new session; stdout and stderr go to `output`."""
        with output.open("ab") as sink:
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pgid = self.process.pid

    def running(self) -> bool:
        """Whether the main process is still alive."""
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        """Send `signum` to the main process only."""
        self.process.send_signal(signum)

    def stop(self) -> None:
        """SIGTERM the whole group; SIGKILL what is left at the deadline."""
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT)

        # A child may outlive its parent for a moment (a delivery agent in the
        # middle of a session): leave no live process of the group behind.
        self._signal_group(signal.SIGKILL)
        wait_until(lambda: not group_members(self.pgid), STOP_TIMEOUT, "group exit")

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signum)


def allow_search(folder: Path) -> None:
    """Let every user traverse (not list) `folder` and each folder above it.

    Postfix opens data_directory, maillog_file and LMTP unix sockets as user
    postfix, and pytest makes its temporary root mode 0700.
    """
    for path in (folder, *folder.parents):
        mode = path.stat().st_mode
        if not mode & stat.S_IXOTH:
            path.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def live_processes() -> Iterator[tuple[int, list[str]]]:
    """Every process that is not a zombie, with the /proc/PID/stat fields after comm."""
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            yield int(stat_file.parent.name), fields


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group `pgid`."""
    return [pid for pid, fields in live_processes() if int(fields[2]) == pgid]


def namespace_members(namespace: str) -> list[int]:
    """Live processes in the PID namespace `namespace` (a /proc/PID/ns/pid link)."""
    members = []
    for pid, _ in live_processes():
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/ns/pid") == namespace:
                members.append(pid)
    return members


class LoopbackMta:
    """What both MTAs share: a foreground daemon, an SMTP port on 127.0.0.1."""

    name = "MTA"

    def __init__(self, folder: Path) -> None:
        """Keep everything under `folder`; pick a free SMTP port."""
        self.folder = folder
        self.smtp_port = free_port()
        self._daemon: Daemon | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def prepare(self) -> None:
        """Write the configuration (start() does this first)."""
        raise NotImplementedError

    def start(self) -> None:
        """Prepare, run the daemon and wait until all its listeners accept."""
        self.prepare()
        self._daemon = Daemon(self._daemon_args(), self.folder / "daemon.out")
        try:
            wait_until(self._listening, START_TIMEOUT, f"{self.name} to listen")
        except (TimeoutError, MtaError) as error:
            self.stop()
            output = read_text(self.folder / "daemon.out")
            raise MtaError(
                f"{self.name} did not start: {error}\n{output}{self._diagnostics()}"
            ) from None

    def stop(self) -> None:
        """Stop the daemon and every process it started; safe to call twice."""
        if self._daemon is not None:
            self._daemon.stop()
            self._daemon = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pgid(self) -> int:
        """The daemon's process group (to check that nothing is left after stop)."""
        assert self._daemon is not None, f"{self.name} is not running"
        return self._daemon.pgid

    def send(
        self,
        mail_from: str,
        rcpt_tos: list[str],
        message: bytes,
        *,
        address: str = "127.0.0.1",
        port: int | None = None,
    ) -> Refused:
        """Submit a message over SMTP; return the refused recipients (maybe all)."""
        port = port or self.smtp_port
        with smtplib.SMTP(
            address, port, local_hostname="client.test", timeout=30
        ) as smtp:
            try:
                return smtp.sendmail(mail_from, rcpt_tos, message)
            except smtplib.SMTPRecipientsRefused as refused:
                return dict(refused.recipients)

    def _daemon_args(self) -> list[str]:
        raise NotImplementedError

    def _addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", self.smtp_port)]

    def _diagnostics(self) -> str:
        return ""

    def _listening(self) -> bool:
        if self._daemon is None or not self._daemon.running():
            raise MtaError(f"{self.name} exited")
        return all(is_listening(address, port) for address, port in self._addresses())


@dataclass(frozen=True)
class QueueDir:
    """One top-level queue directory as `postfix check` creates it."""

    name: str
    uid: int
    gid: int
    mode: int


QueueLayout = tuple[QueueDir, ...]


@dataclass(frozen=True)
class Listener:
    """An extra smtpd listener in master.cf with its own `-o` overrides."""

    address: str
    port: int
    options: tuple[tuple[str, str], ...]

    def master_cf(self) -> str:
        """The master.cf entry; a value with spaces takes the `-o { n = v }` form."""
        lines = [f"{self.address}:{self.port} inet n - n - - smtpd"]
        for name, value in self.options:
            spaced = " " in value
            lines.append(
                f"  -o {{ {name} = {value} }}" if spaced else f"  -o {name}={value}"
            )
        return "\n".join(lines)


MASTER_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
smtp      unix  -       -       n       -       -       smtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixInstance(LoopbackMta):
    """A private Postfix: its own config, queue and log under `folder`.

    Configure the public attributes, then start(); after changing them on a
    running instance, call reload().
    """

    name = "Postfix"

    def __init__(
        self,
        folder: Path,
        *,
        myhostname: str = "mx.eco.test",
        queue_layout: QueueLayout | None = None,
    ) -> None:
        """Prepare the folders; `queue_layout` skips the slow `postfix check`."""
        super().__init__(folder)
        self.config_dir = folder / "etc"
        self.queue_dir = folder / "spool"
        self.data_dir = folder / "data"
        self.maillog = folder / "maillog"
        self.socket_dir = folder / "sockets"
        self.myhostname = myhostname
        self.mydomain = myhostname.partition(".")[2]
        self.transport: dict[str, str] = {}
        self.relay_domains: list[str] = []
        self.smtpd_milters = ""
        self.milter_default_action = "tempfail"
        self.milter_connect_macros = "j {daemon_name} {daemon_addr} {daemon_port} v _"
        self.extra_main_cf: dict[str, str] = {}
        self.listeners: list[Listener] = []
        self._queue_layout = queue_layout
        for path in (self.config_dir, self.socket_dir, self.data_dir):
            path.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.data_dir, "postfix")
        allow_search(folder)

    def add_listener(
        self,
        address: str,
        port: int | None = None,
        options: dict[str, str] | None = None,
    ) -> int:
        """Add an smtpd listener on address:port (default: a free one); return it."""
        port = port or free_port(address)
        self.listeners.append(Listener(address, port, tuple((options or {}).items())))
        return port

    def socket_path(self, name: str) -> Path:
        """A path for a unix socket next to the instance, e.g. for an LMTP server."""
        return self.socket_dir / name

    def prepare(self) -> None:
        """Write the config and create the queue folders."""
        self.write_config()
        self._create_queue()

    def reload(self) -> None:
        """Rewrite the config and make master re-read it (texthash maps included)."""
        self.write_config()
        assert self._daemon is not None, "reload() needs a running Postfix"
        reloads = len(re.findall(r"master\[\d+\]: reload ", self.log_text()))
        self._daemon.signal(signal.SIGHUP)
        self.wait_for_log(r"master\[\d+\]: reload ", count=reloads + 1)
        wait_until(self._listening, START_TIMEOUT, "Postfix listeners after reload")

    def flush(self) -> None:
        """Attempt delivery of every queued message now (postqueue -f).

        postqueue -f has qmgr scan the incoming and deferred queues, but qmgr
        takes no file whose time stamp is still in the future: a deferred
        message's next try, and 60 s for one that qmgr found still locked by
        its delivery agent ("skipped, still being delivered", which the 1 s
        backoff of these fixtures makes likely). So wait until nothing is in
        delivery, bring those time stamps back to now, then flush.
        """
        wait_until(lambda: not self._files("active"), 10.0, "deliveries to end")
        now = time.time()
        for path in self._files("incoming") + self._files("deferred"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime > now:
                    os.utime(path, (now, now))
        self._postfix_command("postqueue", "-f")

    def _files(self, queue: str) -> list[Path]:
        """The queue files in one of Postfix's queue folders (active, deferred...)."""
        folder = self.queue_dir / queue
        return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []

    def clear_queue(self) -> None:
        """Delete every queued message (postsuper -d ALL)."""
        self._postfix_command("postsuper", "-d", "ALL")

    def queue_ids(self) -> list[str]:
        """Queue ids of the messages in any queue, read from the queue folders.

        qmgr moves files between folders while we list them, so a message can
        be seen twice or missed: read until two listings agree.
        """
        listings = [self._list_queue(), self._list_queue()]
        while listings[-1] != listings[-2] and len(listings) < 20:
            listings.append(self._list_queue())
        return listings[-1]

    def _list_queue(self) -> list[str]:
        return sorted({p.name for name in QUEUE_NAMES for p in self._files(name)})

    def log_text(self) -> str:
        """The maillog so far."""
        return read_text(self.maillog)

    def wait_for_log(
        self, pattern: str, timeout: float = 10.0, count: int = 1
    ) -> list[re.Match[str]]:
        """Wait until `pattern` (a regex) matches `count` maillog lines."""
        return wait_for_text(self.log_text, pattern, timeout, count)

    def write_config(self) -> None:
        """Write main.cf, master.cf and the texthash maps."""
        domains = sorted({*self.relay_domains, *self.transport})
        self._write("relay_domains", "".join(f"{d} OK\n" for d in domains))
        routes = sorted(self.transport.items())
        self._write("transport", "".join(f"{d} {t}\n" for d, t in routes))
        main = {**self._main_cf(), **self.extra_main_cf}
        self._write("main.cf", "".join(f"{k} = {v}\n" for k, v in main.items()))
        self._write("master.cf", self._master_cf())

    def _main_cf(self) -> dict[str, str]:
        etc = self.config_dir
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": self.myhostname,
            "mydomain": self.mydomain,
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            # Test clients connect from loopback: keep them outside mynetworks so
            # relay_domains decides what is accepted, as for mail from outside.
            "mynetworks": "",
            "alias_maps": "",
            "alias_database": "",
            "local_transport": "error:local delivery is disabled",
            "biff": "no",
            "smtp_dns_support_level": "disabled",
            "smtpd_banner": "$myhostname ESMTP fixture",
            "maillog_file_prefixes": f"/var, /dev/stdout, {self.folder}",
            "maillog_file": str(self.maillog),
            "relay_domains": f"texthash:{etc / 'relay_domains'}",
            "transport_maps": f"texthash:{etc / 'transport'}",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "5s",
            "lmtp_connect_timeout": "5s",
            "lmtp_data_done_timeout": "30s",
            "lmtp_send_xforward_command": "yes",
            "non_smtpd_milters": "",
            "milter_default_action": self.milter_default_action,
            "milter_connect_macros": self.milter_connect_macros,
        }
        if self.smtpd_milters:
            settings["smtpd_milters"] = self.smtpd_milters
        return settings

    def _master_cf(self) -> str:
        main = Listener("127.0.0.1", self.smtp_port, ())
        entries = [main.master_cf(), *(x.master_cf() for x in self.listeners)]
        return MASTER_SERVICES + "\n".join(entries) + "\n"

    def _write(self, name: str, text: str) -> None:
        path = self.config_dir / name
        path.write_text(text)
        # Postfix distrusts a file changed since just before it began reading
        # (it may be half written) and rereads it every 300 ms until it looks
        # settled; dated back, start() and reload() take milliseconds, not 2 s.
        settled = time.time() - 60
        os.utime(path, (settled, settled))

    def _create_queue(self) -> None:
        """Create the queue folders, copying a known layout or via `postfix check`."""
        self.queue_dir.mkdir(exist_ok=True)
        if self._queue_layout is None:
            self._postfix_command("postfix", "check")
            return
        for entry in self._queue_layout:
            path = self.queue_dir / entry.name
            path.mkdir(exist_ok=True)
            os.chown(path, entry.uid, entry.gid)
            path.chmod(entry.mode)

    def queue_layout(self) -> QueueLayout:
        """The top-level queue folders as they are now (after `postfix check`)."""
        folders = sorted(self.queue_dir.iterdir())
        stats = ((p.name, p.stat()) for p in folders if p.is_dir())
        return tuple(
            QueueDir(n, s.st_uid, s.st_gid, s.st_mode & 0o7777) for n, s in stats
        )

    def _daemon_args(self) -> list[str]:
        # master -d stays in the foreground; postfix start-fg would leave master
        # running under a shell that our SIGTERM does not reach.
        return [str(POSTFIX_MASTER), "-c", str(self.config_dir), "-d"]

    def _addresses(self) -> list[tuple[str, int]]:
        extra = [(listener.address, listener.port) for listener in self.listeners]
        return [*super()._addresses(), *extra]

    def _diagnostics(self) -> str:
        check = ["postfix", "-c", str(self.config_dir), "check"]
        return f"{terminal_output(check)}maillog:\n{self.log_text()}"

    def _postfix_command(self, command: str, *args: str) -> str:
        command_line = [command, "-c", str(self.config_dir), *args]
        try:
            return run_command(command_line, command)
        except MtaError as error:
            output = terminal_output(command_line)
            raise MtaError(f"{error}{output}maillog:\n{self.log_text()}") from None


class SendmailUnavailable(Exception):
    """sendmail could not be fetched or a tool it needs is missing."""


def sendmail_root(cache: Path = SENDMAIL_CACHE) -> Path:
    """The unpacked sendmail packages, fetched into `cache` on first use.

    sendmail-bin conflicts with postfix as a package, so it is never installed:
    the .debs are unpacked with `dpkg -x` into a tree reused across runs.
    """
    missing = [tool for tool in SENDMAIL_TOOLS if shutil.which(tool) is None]
    if missing:
        raise SendmailUnavailable(f"missing tools: {', '.join(missing)}")
    root = cache / "root"
    if (root / SENDMAIL_BINARY).exists():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / SENDMAIL_BINARY).exists():
            _unpack(_download(cache / "debs"), root)
    return root


def _download(folder: Path) -> list[Path]:
    """apt-get download the packages into `folder`; update the lists once if needed."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    download = ["apt-get", "-q", "-o", "APT::Sandbox::User=root", "download"]
    try:
        run_command([*download, *SENDMAIL_PACKAGES], "apt-get download", cwd=folder)
    except (MtaError, subprocess.TimeoutExpired):
        try:
            run_command(["apt-get", "-q", "update"], "apt-get update")
            run_command([*download, *SENDMAIL_PACKAGES], "apt-get download", cwd=folder)
        except (MtaError, subprocess.TimeoutExpired) as error:
            raise SendmailUnavailable(f"cannot download sendmail: {error}") from None
    return sorted(folder.glob("*.deb"))


def _unpack(debs: list[Path], root: Path) -> None:
    """dpkg -x every package into a staging tree, then move it into place."""
    staging = root.with_name("root.partial")
    shutil.rmtree(staging, ignore_errors=True)
    for deb in debs:
        run_command(["dpkg", "-x", str(deb), str(staging)], "dpkg -x")
    staging.rename(root)


SENDMAIL_MC = """\
divert(-1)
divert(0)dnl
include(`{cf}/m4/cf.m4')dnl
VERSIONID(`mdmail test fixture')dnl
OSTYPE(`linux')dnl
define(`confDOMAIN_NAME', `{hostname}')dnl
define(`confDONT_PROBE_INTERFACES', `True')dnl
define(`confBIND_OPTS', `-DNSRCH -DEFNAMES')dnl
define(`confSERVICE_SWITCH_FILE', `{etc}/service.switch')dnl
define(`confHOSTS_FILE', `/etc/hosts')dnl
define(`QUEUE_DIR', `{queue}')dnl
define(`confPID_FILE', `{folder}/sendmail.pid')dnl
define(`ALIAS_FILE', `{etc}/aliases')dnl
define(`STATUS_FILE', `{etc}/statistics')dnl
define(`HELP_FILE', `{etc}/helpfile')dnl
define(`confDEF_USER_ID', `nobody:nogroup')dnl
define(`confDONT_BLAME_SENDMAIL', `{dont_blame}')dnl
define(`confTO_IDENT', `0s')dnl
define(`confDELIVERY_MODE', `background')dnl
define(`confMILTER_MACROS_CONNECT', `{connect_macros}')dnl
FEATURE(`no_default_msa')dnl
DAEMON_OPTIONS(`Port={port}, Addr=127.0.0.1, Name=MTA-v4')dnl
FEATURE(`accept_unresolvable_domains')dnl
FEATURE(`mailertable', `hash -o {etc}/mailertable')dnl
{relay}{milter}MAILER(`local')dnl
MAILER(`smtp')dnl
MAILER_DEFINITIONS
{mailers}
"""

SENDMAIL_CONNECT_MACROS = "j, _, {daemon_name}, {daemon_addr}, {if_name}, {if_addr}"

# WorldWritableDirPathSafe is no valid name; these are enough under /tmp.
DONT_BLAME = (
    "GroupWritableDirPathSafe,TrustStickyBit,MapInUnsafeDirPath,"
    "HelpFileInUnsafeDirPath,ClassFileInUnsafeDirPath"
)

# F=z makes the mailer speak LMTP (RFC 2033); R=EnvToSMTP keeps user@domain.
LMTP_MAILER = (
    "M{name}, P=[IPC], F=kmnDFMuXz, S=EnvFromSMTP/HdrFromSMTP, R=EnvToSMTP, "
    "E=\\r\\n, L=990, T=DNS/RFC822/SMTP, A={argv}"
)


class SendmailInstance(LoopbackMta):
    """A private sendmail daemon (-bD) with its own .cf, queue and mailertable.

    Route a domain with `mailertable[domain] = instance.lmtp_inet(port)` or
    `instance.lmtp_unix(path)`, then start().
    """

    name = "sendmail"

    def __init__(
        self, folder: Path, root: Path, *, hostname: str = "smx.eco.test"
    ) -> None:
        """Prepare the folders; `root` is the unpacked tree from sendmail_root()."""
        super().__init__(folder)
        self.root = root
        self.hostname = hostname
        self.etc = folder / "etc"
        self.queue_dir = folder / "mqueue"
        self.cf = self.etc / "fixture.cf"
        self.traffic_log = folder / "traffic.log"
        self.mailertable: dict[str, str] = {}
        self.relay_domains: list[str] = []
        self.input_mail_filter = ""
        self.extra_mc: list[str] = []
        self._mailers: dict[str, str] = {}
        self.etc.mkdir(parents=True, exist_ok=True)
        self.queue_dir.mkdir(mode=0o700, exist_ok=True)

    def lmtp_inet(self, port: int, address: str = "127.0.0.1") -> str:
        """A mailertable value for an LMTP server on address:port (no MX lookup)."""
        name = f"lmtpinet{port}"
        self._mailers[name] = f"TCP $h {port}"
        return f"{name}:[{address}]"

    def lmtp_unix(self, path: Path) -> str:
        """A mailertable value for an LMTP server on the unix socket `path`."""
        name = f"lmtpunix{len(self._mailers)}"
        self._mailers[name] = f"FILE {path}"
        return f"{name}:localhost"

    def command(self, *args: str, stdin: str | None = None) -> str:
        """Run this sendmail (-C our .cf) once with `args`, e.g. `-bv a@b.test`."""
        return run_command([*self._command(), *args], "sendmail", input=stdin)

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until the daemon has no child left: no session, no delivery."""
        assert self._daemon is not None, "not started"
        # unshare's children live in the namespace it made for them.
        link = f"/proc/{self._daemon.process.pid}/ns/pid_for_children"
        namespace = os.readlink(link)
        idle = lambda: len(namespace_members(namespace)) <= 1  # noqa: E731
        wait_until(idle, timeout, "sendmail to be idle")

    def flush(self) -> None:
        """Run the queue once now, in the foreground (sendmail -qf).

        A queue run skips messages that a delivery still holds locked, so wait
        for the daemon's own deliveries to finish first.  Plain -q would fork
        the run into a child that dies with the namespace when -q returns.
        """
        self.wait_idle()
        self.command("-qf", "-X", str(self.traffic_log))

    def queue_ids(self) -> list[str]:
        """Queue ids of the messages in the queue (its qf files)."""
        return sorted(p.name[2:] for p in self.queue_dir.glob("qf*"))

    def clear_queue(self) -> None:
        """Delete every queued message (deferred mail and bounces)."""
        for path in self.queue_dir.iterdir():
            path.unlink()

    def traffic_text(self) -> str:
        """The -X transcript so far: every SMTP and LMTP line in and out."""
        return read_text(self.traffic_log)

    def wait_for_traffic(
        self, pattern: str, timeout: float = 10.0, count: int = 1
    ) -> list[re.Match[str]]:
        """Wait until `pattern` (a regex) matches `count` times in the transcript."""
        return wait_for_text(self.traffic_text, pattern, timeout, count)

    def prepare(self) -> None:
        """Write the .mc, build the .cf with m4 and the mailertable with makemap."""
        self._write_support_files()
        mc = self.etc / "fixture.mc"
        mc.write_text(self._mc())
        self.cf.write_text(run_command(["m4", str(mc)], "m4"))
        table = "".join(f"{d}\t{r}\n" for d, r in sorted(self.mailertable.items()))
        self._write("mailertable", table)
        makemap = [str(self.root / "usr/libexec/sendmail/makemap"), "-C", str(self.cf)]
        run_command(
            [*makemap, "hash", str(self.etc / "mailertable")],
            "makemap",
            input=table,
        )

    def _mc(self) -> str:
        domains = sorted({*self.relay_domains, *self.mailertable})
        relay = f"RELAY_DOMAIN(`{' '.join(domains)}')dnl\n" if domains else ""
        milter = ""
        if self.input_mail_filter:
            options = f"S={self.input_mail_filter}, F=T, T=C:5s;S:10s;R:10s;E:30s"
            milter = f"INPUT_MAIL_FILTER(`mdmilter', `{options}')dnl\n"
        extra = "".join(f"{line}\n" for line in self.extra_mc)
        mailers = [LMTP_MAILER.format(name=n, argv=a) for n, a in self._mailers.items()]
        return SENDMAIL_MC.format(
            cf=self.root / "usr/share/sendmail/cf",
            hostname=self.hostname,
            etc=self.etc,
            queue=self.queue_dir,
            folder=self.folder,
            dont_blame=DONT_BLAME,
            port=self.smtp_port,
            connect_macros=SENDMAIL_CONNECT_MACROS,
            relay=relay,
            milter=milter + extra,
            mailers="\n".join(mailers),
        )

    def _write_support_files(self) -> None:
        # Lookups from files only: the sandbox has no DNS worth waiting for.
        self._write("service.switch", "hosts files\naliases files\n")
        self._write("aliases", "postmaster: root\n")
        self._write("statistics", "")
        shutil.copyfile(self.root / "etc/mail/helpfile", self.etc / "helpfile")

    def _write(self, name: str, text: str) -> None:
        (self.etc / name).write_text(text)

    def _command(self) -> list[str]:
        """sendmail -C our .cf in its own UTS and PID namespaces.

        With the sandbox's dotless hostname sendmail sleeps 60 s in myhostname()
        waiting for it to become qualified: the UTS namespace gives it a FQDN
        without touching the host.  Its delivery children call setsid() and so
        leave our process group; as PID 1 of a PID namespace sendmail takes
        them all down when it exits, and reaps them while it runs.
        """
        namespaces = ["unshare", "--uts", "--pid", "--fork", "--kill-child"]
        set_name = 'hostname "$0" && exec "$@"'
        binary = str(self.root / SENDMAIL_BINARY)
        shell = ["sh", "-c", set_name, self.hostname, binary]
        return [*namespaces, *shell, "-C", str(self.cf)]

    def _daemon_args(self) -> list[str]:
        return [*self._command(), "-bD", "-q10s", "-X", str(self.traffic_log)]

    def _diagnostics(self) -> str:
        return self.traffic_text()


@pytest.fixture(scope="session")
def postfix_queue_layout(tmp_path_factory: pytest.TempPathFactory) -> QueueLayout:
    """The queue folders `postfix check` makes, made once per session."""
    missing = [name for name in POSTFIX_COMMANDS if shutil.which(name) is None]
    if missing or not POSTFIX_MASTER.exists():
        pytest.skip(f"Postfix is not installed (missing {missing or POSTFIX_MASTER})")
    template = PostfixInstance(tmp_path_factory.mktemp("postfix-template"))
    template.prepare()
    return template.queue_layout()


@pytest.fixture
def postfix(
    tmp_path: Path, postfix_queue_layout: QueueLayout
) -> Iterator[PostfixInstance]:
    """A configured, not yet started Postfix under tmp_path; stopped after the test."""
    instance = PostfixInstance(tmp_path / "postfix", queue_layout=postfix_queue_layout)
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="session")
def sendmail_tree() -> Path:
    """The unpacked sendmail packages (downloaded once into the cache)."""
    try:
        return sendmail_root()
    except SendmailUnavailable as error:
        pytest.skip(f"sendmail unavailable: {error}")


@pytest.fixture
def sendmail(tmp_path: Path, sendmail_tree: Path) -> Iterator[SendmailInstance]:
    """A configured, not yet started sendmail under tmp_path; stopped after the test."""
    instance = SendmailInstance(tmp_path / "sendmail", sendmail_tree)
    try:
        yield instance
    finally:
        instance.stop()
