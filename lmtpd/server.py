"""The asyncio layer: sockets in, the protocol core and the Deliverer behind.

Each connection is a `Session` task that feeds bytes to an `LMTPConnection` and
answers its events. On SIGTERM the server stops listening, tells idle sessions
"421 shutting down", lets messages in flight finish for a grace period, then
abandons what is left (their staged bodies are removed: nothing was acknowledged).
"""

import asyncio
import contextlib
import itertools
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

from lmtpd import replies
from lmtpd.delivery import Deliverer, Steps, Sync, Transaction, staging_failure
from lmtpd.events import (
    BodyAborted,
    BodyChunk,
    BodyStart,
    ConnectionClosed,
    Event,
    Lhlo,
    MailFrom,
    MessageComplete,
    NeedData,
    Quit,
    RcptTo,
)
from lmtpd.protocol import LMTPConnection
from lmtpd.replies import Reply
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

READ_SIZE = 256 * 1024
MAX_WORKERS = 64

T = TypeVar("T")
SHUTDOWN_GRACE = 30.0


class RepliesNotRead(Exception):
    """The client left our replies unread for idle_timeout seconds."""


class Session:
    """One LMTP connection."""

    ids = itertools.count(1)

    def __init__(
        self,
        server: "LmtpServer",
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        config = server.config
        self.conn = LMTPConnection(config.hostname, server.limits)
        self.name = f"{server.session_prefix}{next(self.ids):x}"
        self.peer = _peer(writer)
        self.txn: Transaction | None = None
        self.messages = itertools.count(1)
        self.idle = True

    async def run(self) -> None:
        """Serve the connection until QUIT, EOF, timeout or shutdown."""
        self.conn.send_greeting()
        log.debug("%s: connect from %s", self.name, self.peer)
        try:
            await self._loop()
        except (ConnectionError, asyncio.IncompleteReadError):
            log.info("%s: connection lost from %s", self.name, self.peer)
        except RepliesNotRead:
            log.info("%s: timeout writing to %s", self.name, self.peer)
        finally:
            self._discard()
            self.writer.close()

    async def _loop(self) -> None:
        while True:
            event = self.conn.next_event()
            if isinstance(event, NeedData):
                await self._flush()
                data = await self._read()
                self.conn.receive_data(data)
            elif isinstance(event, Quit | ConnectionClosed):
                await self._flush()
                return
            else:
                await self._handle(event)

    async def _read(self) -> bytes:
        self.idle = self.txn is None or self.txn.staged is None
        if self.idle and self.server.stopping:
            self.conn.shutdown(replies.SHUTTING_DOWN)
            return b""
        try:
            # asyncio.timeout, not wait_for: no task of its own per read.
            async with asyncio.timeout(self.server.config.lmtp.idle_timeout):
                return await self.reader.read(READ_SIZE)
        except asyncio.CancelledError:
            # stop() wakes idle sessions this way: say goodbye properly.
            if not self.server.stopping:
                raise
            self.conn.shutdown(replies.SHUTTING_DOWN)
            return b""
        except TimeoutError:
            log.info("%s: timeout from %s", self.name, self.peer)
            self.conn.shutdown(replies.TIMEOUT)
            return b""
        finally:
            self.idle = False

    async def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)
            if not self.writer.transport.get_write_buffer_size():
                # All of it went out in the write: nothing to wait for.
                return
            try:
                async with asyncio.timeout(self.server.config.lmtp.idle_timeout):
                    await self.writer.drain()
            except TimeoutError:
                # A client that sends on but never reads its replies would hold
                # its session for good: treat it as idle, and drop what is unsent.
                self.writer.transport.abort()
                raise RepliesNotRead from None

    async def _handle(self, event: Event) -> None:
        if isinstance(event, BodyChunk):
            self._stage(event.data, event.crlf)
        elif isinstance(event, MailFrom):
            self.txn = Transaction(self._queue_id(), event.envelope.mail_from)
        elif isinstance(event, RcptTo):
            self._rcpt(event)
        elif isinstance(event, BodyStart):
            await self._body_start()
        elif isinstance(event, MessageComplete):
            await self._complete(event)
        elif isinstance(event, BodyAborted):
            log.info("%s: message abandoned (%s)", self._qid(), event.reason.value)
            self._discard()
        elif isinstance(event, Lhlo):
            log.debug("%s: lhlo=%s", self.name, event.session.lhlo_name)

    def _rcpt(self, event: RcptTo) -> None:
        if self.txn is None:
            self.txn = Transaction(self._queue_id(), event.envelope.mail_from)
        reply, _ = self.server.deliverer.check_recipient(
            self.txn, event.address, event.envelope.declared_size
        )
        self.conn.answer_rcpt(reply)

    async def _body_start(self) -> None:
        if self.txn is None or not self.txn.recipients:
            self.conn.answer_body_start(replies.LOCAL_ERROR)
            return
        try:
            # The staging file is created here, on the loop: creating it in a
            # worker thread, not waited for, measured slower (665 against 799
            # msg/s, interleaved runs), even while a profile found the loop in
            # this open(2) a third of the time (an ext4 without a journal walks
            # recently freed inodes to allocate one: CPU the hop does not save).
            self.server.deliverer.open_body(self.txn)
        except OSError as exc:
            self.conn.answer_body_start(staging_failure(self._qid(), exc))
            return
        self.conn.answer_body_start(None)

    def _stage(self, data: bytes, crlf: bool) -> None:
        txn = self.txn
        if txn is None or txn.staged is None:
            return
        try:
            txn.staged.write(data, crlf_only=crlf)
        except OSError as exc:
            # The rest of the body is read and dropped; at its end every
            # recipient is told, so the client stays in step (RFC 2033 4.2).
            txn.fail(exc)

    async def _complete(self, event: MessageComplete) -> None:
        txn = self.txn
        if event.defect is not None or txn is None:
            self._discard()
            return
        ident = self.conn.session.xforward.ident
        # The queue id of the MTA, with the recipient, makes a retry after a lost
        # connection a duplicate instead of a second copy.
        replies_out = await self._run_steps(self.server.deliverer.finish(txn, ident))
        self.txn = None
        self.conn.answer_message(replies_out)

    async def _run_steps(self, steps: Steps) -> list[Reply]:
        """Run a delivery: its Blocking steps in worker threads, the rest here."""
        try:
            step = next(steps)
            while True:
                try:
                    if isinstance(step, Sync):
                        value = await self.server.fsync(step.fds)
                    else:
                        value = await self.server.in_worker(step.run)
                except Exception as exc:  # handed back to the step that asked
                    step = steps.throw(exc)
                else:
                    step = steps.send(value)
        except StopIteration as done:
            replies_out: list[Reply] = done.value
            return replies_out

    def _discard(self) -> None:
        if self.txn is not None:
            self.txn.discard()
            self.txn = None

    def _queue_id(self) -> str:
        ident = self.conn.session.xforward.ident
        return ident if ident else f"{self.name}.{next(self.messages)}"

    def _qid(self) -> str:
        return self.txn.queue_id if self.txn is not None else self.name


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
        self.sessions: dict[asyncio.Task[None], Session] = {}
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
        for sock in sockets:
            if sock.family == socket.AF_UNIX:
                server = await asyncio.start_unix_server(self._accept, sock=sock)
            else:
                server = await asyncio.start_server(self._accept, sock=sock)
            self.servers.append(server)
        self.listening = _names(self.servers)
        log.info("lmtpd: listening on %s", ", ".join(self.listening))

    def _clean_staging(self) -> None:
        staging = self.config.root.staging
        if staging.is_dir():
            removed = clean_stale(staging, self.config.lmtp.tmp_max_age, time.time())
            if removed:
                log.info("lmtpd: removed %d stale staged file(s)", removed)

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        session = Session(self, reader, writer)
        if len(self.sessions) >= self.config.lmtp.max_sessions or self.stopping:
            reply = (
                replies.SHUTTING_DOWN if self.stopping else replies.TOO_MANY_SESSIONS
            )
            writer.write(reply.to_bytes())
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self.sessions[task] = session
        try:
            await session.run()
        finally:
            del self.sessions[task]

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
        for task, session in list(self.sessions.items()):
            if session.idle:
                task.cancel()
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
        tasks = list(self.sessions)
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)

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


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple):
        return f"{peer[0]}:{peer[1]}"
    return "local"


def _names(servers: list[asyncio.Server]) -> list[str]:
    names = []
    for server in servers:
        for sock in server.sockets:
            name = sock.getsockname()
            names.append(name if isinstance(name, str) else f"{name[0]}:{name[1]}")
    return names
