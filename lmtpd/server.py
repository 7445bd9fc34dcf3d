"""The asyncio layer: listeners, sessions, and the disk work of deliveries.

Each connection is a `Session` (lmtpd/session.py) over the protocol core. On
SIGTERM the server stops listening, tells idle sessions "421 shutting down",
lets messages in flight finish for a grace period, then abandons what is left
(their staged bodies are removed: nothing was acknowledged).
"""

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from lmtpd.delivery import Deliverer
from lmtpd.session import Session
from lmtpd.transaction import Limits
from mdcore.blocking import BlockingPool
from mdcore.config import ServerConfig
from mdcore.exporter import Exporter, start_exporter
from mdcore.kernelsync import UNSUPPORTED, KernelSync, fsync_each
from mdcore.layout import StateRoot, hosted_domains
from mdcore.listeners import SocketOwner, open_listeners
from mdcore.maildir import clean_stale, clean_tmp
from mdcore.metrics import Metrics, hosted_in
from mdcore.namespace import Registry

log = logging.getLogger(__name__)

MAX_WORKERS = 64

T = TypeVar("T")
SHUTDOWN_GRACE = 30.0


class LmtpServer:
    """All listeners and sessions of one LMTP server process."""

    def __init__(self, config: ServerConfig, registry: Registry | None = None) -> None:
        self.config = config
        self.registry = registry or Registry(config.root)
        self.metrics = Metrics(hosted_in(self.registry))
        self.exporter: Exporter | None = None
        self.deliverer = Deliverer(config, self.registry, self.metrics)
        self.limits = _limits(config)
        self.session_prefix = f"L{secrets.token_hex(2)}"
        self.stopping = False
        self.sessions: set[Session] = set()
        self.servers: list[asyncio.Server] = []
        self.listening: list[str] = []
        # One worker per concurrent delivery, up to a bound: the disk commits many
        # fsyncs together (a journal commit serves all writers waiting on it), so
        # parallel deliveries are what makes durable delivery fast.
        workers = min(config.lmtp.max_sessions, MAX_WORKERS)
        self.workers = BlockingPool(workers, "deliver")
        self.sweeper: threading.Thread | None = None
        self.kernel_sync: KernelSync | None = None

    async def start(self, sockets: list[socket.socket] | None = None) -> None:
        """Open the listeners (or use the given sockets) and start accepting."""
        lmtp = self.config.lmtp
        # Before the listeners: a metrics port that is taken stops the start
        # with no socket file of ours left behind.
        self.exporter = start_exporter(
            lmtp.metrics_listen,
            self.metrics.registry,
            self.config.source,
            "lmtp.metrics_listen",
        )
        if sockets is None:
            owner = SocketOwner(
                int(lmtp.socket_mode, 8), lmtp.socket_owner, lmtp.socket_group
            )
            sockets = open_listeners(lmtp.listen, owner)
        self._clean_staging()
        if lmtp.fsync == "auto":
            self.kernel_sync = await KernelSync.open(self.config.root.path)
        how = "by io_submit(2)" if self.kernel_sync else "in worker threads"
        log.info("lmtpd: fsync %s", how)
        # Maildir tmp/ files left by a crash: swept in the background, since a
        # server with many mailboxes must not wait for it before accepting mail.
        self.sweeper = threading.Thread(
            target=sweep_maildir_tmp,
            args=(self.config.root, self.config.lmtp.tmp_max_age),
            name="tmp-sweep",
        )
        self.sweeper.start()
        loop = asyncio.get_running_loop()
        for sock in sockets:
            if sock.family == socket.AF_UNIX:
                server = await loop.create_unix_server(self._session, sock=sock)
            else:
                server = await loop.create_server(self._session, sock=sock)
            self.servers.append(server)
        self.listening = _names(self.servers)
        log.info("lmtpd: listening on %s", ", ".join(self.listening))

    def _clean_staging(self) -> None:
        staging = self.config.root.staging
        if staging.is_dir():
            removed = clean_stale(staging, self.config.lmtp.tmp_max_age, time.time())
            if removed:
                log.info("lmtpd: removed %d stale staged file(s)", removed)

    def _session(self) -> Session:
        return Session(self)

    async def fsync(self, fds: Sequence[int]) -> list[OSError | None]:
        """Fsync files or folders of a delivery; the error of each, or None.

        By the kernel (native AIO) where it can, without a thread: a thread for
        each fsync cost the loop about sixty futex calls a message in GIL
        hand-overs. A file the kernel cannot fsync that way is synced again
        in a worker thread.
        """
        if self.kernel_sync is None:
            return await self.in_worker(fsync_each, fds)
        errors = await self.kernel_sync.fsync(fds)
        again = [n for n, e in enumerate(errors) if e and e.errno == UNSUPPORTED]
        if again:
            retried = await self.in_worker(fsync_each, [fds[n] for n in again])
            for number, error in zip(again, retried, strict=True):
                errors[number] = error
        return errors

    async def in_worker(self, function: Callable[..., T], *args: Any) -> T:
        """Run a blocking step (file creation, fsync, links) in a worker thread."""
        return await self.workers.run(function, *args)

    async def stop(
        self, grace: float = SHUTDOWN_GRACE, remove_sockets: bool = True
    ) -> None:
        """Stop accepting, close idle sessions, let deliveries finish, then exit."""
        self.stopping = True
        for server in self.servers:
            server.close()
        for session in list(self.sessions):
            session.stop_if_idle()
        await self._wait_sessions(grace)
        for server in self.servers:
            await server.wait_closed()
        if remove_sockets:
            self._remove_socket_files()
        self.workers.shutdown()
        if self.sweeper is not None:
            self.sweeper.join()
        if self.kernel_sync is not None:
            self.kernel_sync.close()
        if self.exporter is not None:
            # Last, so a scrape during the grace period still sees the counts.
            await asyncio.to_thread(self.exporter.close)
        log.info("lmtpd: stopped")

    async def _wait_sessions(self, grace: float) -> None:
        sessions = list(self.sessions)
        if not sessions:
            return
        closed = [session.closed for session in sessions]
        await asyncio.wait(closed, timeout=grace)
        late = [session for session in sessions if not session.closed.done()]
        for session in late:
            session.abandon()
        if late:
            await asyncio.wait([session.closed for session in late], timeout=5)

    def _remove_socket_files(self) -> None:
        for name in self.listening:
            if name.startswith("/"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)

    def reload(self, config: ServerConfig) -> None:
        """Take a new configuration (SIGHUP); listeners stay as they are."""
        # The metrics endpoint stays where it is too.
        kept = self.config.lmtp
        self.config = replace(
            config,
            lmtp=replace(
                config.lmtp, listen=kept.listen, metrics_listen=kept.metrics_listen
            ),
        )
        self.deliverer.config = self.config
        # Sessions opened from now on get the new limits; open ones keep theirs.
        self.limits = _limits(self.config)
        self.registry.invalidate()
        log.info("lmtpd: configuration reloaded from %s", config.source)


def _limits(config: ServerConfig) -> Limits:
    lmtp = config.lmtp
    return Limits(
        max_message_size=lmtp.max_message_size,
        max_line_length=lmtp.max_line_length,
        max_recipients=lmtp.max_recipients,
    )


def sweep_maildir_tmp(root: StateRoot, max_age: int) -> int:
    """Remove files older than max_age from every hosted account's Maildir tmp/."""
    removed = 0
    for domain in hosted_domains(root):
        mail = root.tree(domain).mail
        try:
            homes = list(os.scandir(mail))
        except FileNotFoundError:
            continue
        for home in homes:
            maildir = Path(home.path) / "Maildir"
            if (maildir / "tmp").is_dir():
                removed += clean_tmp(maildir, max_age)
    if removed:
        log.info("lmtpd: removed %d stale file(s) from Maildir tmp/ folders", removed)
    return removed


def _names(servers: list[asyncio.Server]) -> list[str]:
    names = []
    for server in servers:
        for sock in server.sockets:
            name = sock.getsockname()
            names.append(name if isinstance(name, str) else f"{name[0]}:{name[1]}")
    return names
