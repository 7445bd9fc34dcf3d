"""One POP3 connection: the protocol core fed from a socket, its events answered.

A `Session` gives the core one line at a time, so that when a login turns
out to belong to a forwarded domain, whatever the client pipelined after it
is still ours to pass on. Blocking steps (password checks, opening the
Maildir, reading messages, removing them) run in the server's workers.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from mdcore.logs import for_domain
from mdcore.maildrop import Maildrop, MaildropInUseError
from mdcore.metrics import LoginOutcome
from pop3proxy import forward, responses
from pop3proxy.auth import LoginAttempt, Outcome, Verdict
from pop3proxy.dialogue import State
from pop3proxy.events import (
    Authenticate,
    ConnectionClosed,
    NeedData,
    RetrieveMessage,
    StartTLS,
    Update,
)
from pop3proxy.maildrop import Maildrop as Listing
from pop3proxy.protocol import POP3Connection
from pop3proxy.responses import Response

if TYPE_CHECKING:
    from pop3proxy.server import Pop3Server

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
# Messages up to this size are read in one step on the event loop; larger
# ones in worker steps of MESSAGE_CHUNK (RETR's memory per session).
SMALL_MESSAGE = 128 * 1024
MESSAGE_CHUNK = 256 * 1024
# Replies to pipelined commands are written together up to this many octets.
FLUSH_SIZE = 64 * 1024
HANDSHAKE_TIMEOUT = 30.0

T = TypeVar("T")

# The metrics' name of each login outcome.
_LOGIN_OUTCOMES = {
    Outcome.OK: LoginOutcome.OK,
    Outcome.FAILED: LoginOutcome.FAILED,
    Outcome.DISABLED: LoginOutcome.DISABLED,
    Outcome.IN_USE: LoginOutcome.IN_USE,
    Outcome.UNAVAILABLE: LoginOutcome.UNAVAILABLE,
    Outcome.FORWARD: LoginOutcome.FORWARDED,
}


class Session:
    """One POP3 connection, from greeting to close."""

    ids = itertools.count(1)

    def __init__(
        self,
        server: Pop3Server,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        implicit_tls: bool,
    ) -> None:
        """Take a connection; over POP3S the handshake is already done."""
        self.server = server
        self.reader = reader
        self.writer = writer
        self.name = f"{server.session_prefix}{next(self.ids):x}"
        self.client_host, self.client_port = _address(writer, "peername")
        self.local_host, _ = _address(writer, "sockname")
        self.tls = implicit_tls
        self.conn = POP3Connection(
            server.settings,
            plaintext_allowed=implicit_tls or server.auth.is_trusted(self.client_host),
            tls_active=implicit_tls,
        )
        self.pending = bytearray()
        self.drop: Maildrop | None = None
        self.verdict: Verdict | None = None
        self.idle = False

    @property
    def client(self) -> str:
        """The client's address for logs and per-client limits."""
        return self.client_host or "local"

    async def run(self) -> None:
        """Serve the connection until it closes; the maildrop is always released."""
        log.debug("%s: connect from %s to %s", self.name, self.client, self.local_host)
        self.conn.send_greeting()
        try:
            await self._serve()
        finally:
            self._release()
            self.writer.close()

    async def _serve(self) -> None:
        while True:
            event = self.conn.next_event()
            if isinstance(event, StartTLS):
                await self._drop_cleartext()
            if not self._may_hold_output(event):
                await self._flush()
            if isinstance(event, NeedData):
                self.conn.receive_data(await self._next_input())
            elif isinstance(event, StartTLS):
                await self._start_tls()
            elif isinstance(event, Authenticate):
                if await self._login(event):
                    return
            elif isinstance(event, RetrieveMessage):
                await self._retrieve(event)
            elif isinstance(event, Update):
                await self._update(event)
            else:
                self._log_logout(event)
                return

    # Bytes in and out.

    def _may_hold_output(self, event: object) -> bool:
        """Whether replies may wait for the next ones (pipelined commands).

        A client that pipelines (RFC 2449 section 6.6) has sent the next
        command already: its replies go out together, one write for many,
        until FLUSH_SIZE octets wait or the session would wait for input.
        """
        if self.conn.output_size() >= FLUSH_SIZE:
            return False
        if isinstance(event, RetrieveMessage):
            return True
        return isinstance(event, NeedData) and bool(self.pending)

    async def _flush(self) -> None:
        data = self.conn.data_to_send()
        if not data or self.writer.is_closing():
            return
        try:
            self.writer.write(data)
            await self.writer.drain()
        except ConnectionError:
            self.conn.connection_lost()

    async def _next_input(self) -> bytes:
        """The next input for the core: a line before login, all there is after."""
        if not self.pending:
            data = await self._receive()
            if not data:
                return b""
            self.pending += data
        if self.conn.state is State.TRANSACTION:
            # Past the login no STLS or forwarding can claim what follows: the
            # core takes all of it, so pipelined commands cost no step each.
            data = bytes(self.pending)
            self.pending.clear()
            return data
        end = self.pending.find(b"\r\n")
        cut = len(self.pending) if end == -1 else end + 2
        line = bytes(self.pending[:cut])
        del self.pending[:cut]
        return line

    async def _receive(self) -> bytes:
        if self.server.stopping:
            self.conn.shutdown(responses.SHUTTING_DOWN)
            return b""
        self.idle = True
        try:
            return await asyncio.wait_for(
                self.reader.read(READ_SIZE), self.server.config.pop3.idle_timeout
            )
        except TimeoutError:
            # RFC 1939 section 3: the autologout timer closes without a reply.
            log.info("%s: autologout client=%s", self.name, self.client)
            self.conn.shutdown()
        except asyncio.CancelledError:
            # stop() wakes idle sessions this way: they say why they close.
            task = asyncio.current_task()
            if not self.server.stopping or task is None:
                raise
            task.uncancel()
            self.conn.shutdown(responses.SHUTTING_DOWN)
        except ConnectionError:
            pass
        finally:
            self.idle = False
        return b""

    # STLS (RFC 2595 section 4).

    async def _drop_cleartext(self) -> None:
        """Throw away what came after STLS before our +OK: it was never encrypted.

        The core drops what it holds; the stream may hold more, read from
        the socket meanwhile. A read that does not wait takes it.
        """
        self.pending.clear()
        while True:
            read = asyncio.ensure_future(self.reader.read(READ_SIZE))
            await asyncio.sleep(0)
            if not read.done():
                read.cancel()
                await asyncio.wait({read})
                return
            if read.exception() is not None or not read.result():
                return

    async def _start_tls(self) -> None:
        context = self.server.tls.context
        assert context is not None
        try:
            await self.writer.start_tls(
                context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
            )
        except (OSError, ssl.SSLError, TimeoutError) as error:
            log.info("%s: TLS failed client=%s (%s)", self.name, self.client, error)
            self.conn.connection_lost()
            return
        self.tls = True
        self.conn.tls_started()

    def _server_name(self) -> str:
        tls_object = self.writer.get_extra_info("ssl_object")
        return self.server.tls.server_name(tls_object) if self.tls else ""

    # Login.

    async def _login(self, event: Authenticate) -> bool:
        """Answer a login; True when the session was forwarded and is over."""
        attempt = LoginAttempt(
            event.user,
            event.password,
            event.authzid,
            event.method,
            self.local_host,
            self.client_host,
            self._server_name(),
        )
        verdict = await self.server.check_password(attempt)
        if verdict.outcome is Outcome.FORWARD:
            return await self._forward(attempt, verdict)
        outcome: Outcome = verdict.outcome
        answer: Listing | Response = _refusal(outcome)
        if outcome is Outcome.OK:
            outcome, answer = await self._open_drop(verdict)
        await self._pause(verdict, outcome)
        self._log_login(attempt, verdict, outcome)
        self.verdict = verdict if outcome is Outcome.OK else None
        self.conn.answer_auth(answer)
        return False

    async def _pause(self, verdict: Verdict, outcome: Outcome) -> None:
        """Wait as the throttle says: the same for a wrong password and no user."""
        if outcome is Outcome.UNAVAILABLE:
            return
        keys = (self.client, verdict.address)
        wait = self.server.throttle.settle(keys, ok=outcome is not Outcome.FAILED)
        if wait > 0:
            await asyncio.sleep(wait)

    async def _open_drop(self, verdict: Verdict) -> tuple[Outcome, Listing | Response]:
        assert verdict.maildir is not None
        try:
            opening = self.server.submit(Maildrop.open, verdict.maildir)
            drop = await _finish_anyway(opening, Maildrop.close)
        except MaildropInUseError:
            return Outcome.IN_USE, responses.MAILDROP_IN_USE
        except OSError as error:
            log.error("%s: cannot open %s: %s", self.name, verdict.address, error)
            return Outcome.UNAVAILABLE, responses.AUTH_UNAVAILABLE
        self.drop = drop
        try:
            return Outcome.OK, Listing(drop.listing.vsizes, drop.listing.uidls)
        except ValueError as error:
            log.error("%s: bad listing of %s: %s", self.name, verdict.address, error)
            self._release()
            return Outcome.UNAVAILABLE, responses.AUTH_UNAVAILABLE

    async def _forward(self, attempt: LoginAttempt, verdict: Verdict) -> bool:
        """Log in on the remote and relay; False (and an -ERR) if that fails."""
        login = forward.RemoteLogin(
            verdict.forward_to,
            verdict.choice.address,
            attempt.password,
            attempt.method,
            self.client_host,
            self.client_port,
        )
        timeout = self.server.config.pop3.forward_timeout
        try:
            remote = await forward.connect(login, timeout)
        except forward.ForwardError as error:
            log.warning("%s: forward failed: %s", self.name, error)
            await self._pause(verdict, error.outcome)
            self._log_login(attempt, verdict, error.outcome)
            self.conn.answer_auth(error.response)
            return False
        await self._pause(verdict, Outcome.OK)
        self._log_login(attempt, verdict, Outcome.OK)
        self.writer.write(remote.welcome)
        self.idle = True
        up, down = await forward.relay(
            self.reader, self.writer, remote, bytes(self.pending)
        )
        log.info(
            "%s: logout domain=%s user=%s forward=%s in=%d out=%d",
            self.name,
            verdict.domain,
            verdict.choice.user,
            verdict.forward_to,
            up,
            down,
            extra=for_domain(verdict.domain),
        )
        return True

    # TRANSACTION and UPDATE.

    async def _retrieve(self, event: RetrieveMessage) -> None:
        """Stream a stored message, one chunk read and sent at a time.

        A small message is read whole, on the event loop if the page cache
        holds it (_retrieve_small). A large one is read in worker steps, one
        chunk each, so that memory stays at one chunk.
        """
        assert self.drop is not None
        index = event.number - 1
        if self.drop.listing.sizes[index] <= SMALL_MESSAGE:
            await self._retrieve_small(event, index)
            return
        reader = _MessageReader(self.drop, index)
        try:
            while True:
                chunk, last = await self.server.in_worker(reader.next_chunk)
                wanted = self.conn.feed_message(chunk) if chunk else True
                if self.conn.output_size() >= FLUSH_SIZE:
                    await self._flush()
                if last or not wanted:
                    break
        except (OSError, ValueError) as error:
            log.error("%s: cannot read message %s: %s", self.name, event.uid, error)
            self.conn.abort_message(responses.MESSAGE_UNAVAILABLE)
            return
        finally:
            reader.close()
        self.conn.finish_message()

    async def _retrieve_small(self, event: RetrieveMessage, index: int) -> None:
        """A small message, read in one step and sent in one piece.

        Read on the event loop when the page cache holds it all (a few
        microseconds, where the hop to a worker thread and back would be most
        of what its RETR costs), else in a worker, so that the loop never waits
        for the disk to read a message.
        """
        # Limitation: opening the file stays on the loop; a message whose
        # inode is not cached holds the loop for that lookup. Opening in the
        # worker when the read must go there would lift it, at one hop more.
        assert self.drop is not None
        try:
            data: bytes | bytearray | None = self.drop.read_cached(index)
            if data is None:
                data = await self.server.in_worker(self.drop.read_whole, index)
        except (OSError, ValueError) as error:
            log.error("%s: cannot read message %s: %s", self.name, event.uid, error)
            self.conn.abort_message(responses.MESSAGE_UNAVAILABLE)
            return
        self.conn.send_message(data)
        if self.conn.output_size() >= FLUSH_SIZE:
            await self._flush()

    async def _update(self, event: Update) -> None:
        """RFC 1939 section 6: remove what DELE marked, then release the maildrop."""
        drop, self.drop = self.drop, None
        assert drop is not None
        indexes = [message.number - 1 for message in event.deleted]
        failed = await _finish_anyway(self.server.submit(_remove, drop, indexes))
        self.conn.answer_update(None if failed == 0 else responses.NOT_ALL_REMOVED)

    def _release(self) -> None:
        if self.drop is not None:
            self.drop.close()
            self.drop = None

    # Log lines.

    def _log_login(
        self, attempt: LoginAttempt, verdict: Verdict, outcome: Outcome
    ) -> None:
        domain = verdict.domain
        self.server.metrics.login(domain, _login_outcome(verdict, outcome))
        log.info(
            "%s: login domain=%s user=%s rule=%s client=%s local=%s status=%s "
            "method=%s tls=%s%s",
            self.name,
            domain or "-",
            verdict.account or verdict.choice.user,
            verdict.choice.rule.value,
            self.client,
            self.local_host or "-",
            outcome.value,
            attempt.method.value,
            "yes" if self.tls else "no",
            f" forward={verdict.forward_to}" if verdict.forward_to else "",
            extra=for_domain(domain) if domain else None,
        )

    def _log_logout(self, event: ConnectionClosed) -> None:
        if not event.authenticated or self.verdict is None:
            return
        verdict = self.verdict
        stats = event.stats
        self.server.metrics.logout(
            verdict.domain, stats.retr_count, stats.retr_octets, stats.deleted
        )
        log.info(
            "%s: logout domain=%s user=%s reason=%s %s",
            self.name,
            verdict.domain,
            verdict.account,
            event.reason.value,
            stats.summary(),
            extra=for_domain(verdict.domain),
        )


def _login_outcome(verdict: Verdict, outcome: Outcome) -> LoginOutcome:
    """The metrics' outcome: a login the remote server took counts as forwarded."""
    if verdict.forward_to and outcome is Outcome.OK:
        return LoginOutcome.FORWARDED
    return _LOGIN_OUTCOMES[outcome]


def _refusal(outcome: Outcome) -> Response:
    """The -ERR for a login that opened nothing (RFC 3206 section 4 codes)."""
    if outcome is Outcome.DISABLED:
        return responses.MAILBOX_DISABLED
    if outcome is Outcome.UNAVAILABLE:
        return responses.AUTH_UNAVAILABLE
    return responses.AUTH_FAILED


async def _finish_anyway(
    future: asyncio.Future[T], abandon: Callable[[T], object] | None = None
) -> T:
    """Await a worker step that must run to its end even if the session is cancelled.

    A Maildrop opened for a session that is gone meanwhile is closed by
    `abandon`; a removal always closes its maildrop itself.
    """
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if abandon is not None:
            future.add_done_callback(functools.partial(_abandoned, abandon))
        raise


def _abandoned(abandon: Callable[[T], object], future: asyncio.Future[T]) -> None:
    if not future.cancelled() and future.exception() is None:
        abandon(future.result())


class _MessageReader:
    """One large stored message, read chunk by chunk in worker steps."""

    def __init__(self, drop: Maildrop, index: int) -> None:
        self.drop = drop
        self.index = index
        self.stream: BinaryIO | None = None

    def next_chunk(self) -> tuple[bytes, bool]:
        """The next chunk, and whether it is the last; opens the file first."""
        if self.stream is None:
            self.stream = self.drop.read(self.index)
        chunk = self.stream.read(MESSAGE_CHUNK)
        # A buffered read of a file returns less than asked only at its end.
        return chunk, len(chunk) < MESSAGE_CHUNK

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()


def _remove(drop: Maildrop, indexes: list[int]) -> int:
    """Remove messages and release the lock, in one worker step; failures count."""
    try:
        return drop.delete(indexes) if indexes else 0
    except OSError:
        log.exception("cannot remove messages from %s", drop.maildir)
        return len(indexes)
    finally:
        drop.close()


def _address(writer: asyncio.StreamWriter, which: str) -> tuple[str, int]:
    """(host, port) of a socket end; ("", 0) for a unix socket."""
    name = writer.get_extra_info(which)
    if isinstance(name, tuple) and len(name) >= 2:
        host = str(name[0])
        if host.startswith("::ffff:"):
            host = host[len("::ffff:") :]
        return host, int(name[1])
    return "", 0
