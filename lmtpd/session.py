"""One LMTP connection as an asyncio Protocol over the protocol core.

The loop calls data_received() with what arrived; the session feeds it to its
`LMTPConnection`, answers the events that follow at once (MAIL, RCPT, DATA and
the body are decided without waiting for anything) and writes the replies.
Only a finished message waits, for its fsyncs: it becomes a task, and the
session takes no event from the core until that task has answered. Compared
with a task per connection reading through a StreamReader, this saves a task
switch, a future and a timeout object for every command the client sends
(measured in `bench/RESULTS.md`).

Idle and unread-reply timeouts share one timer a session, moved on only when
it fires, instead of one per read.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from lmtpd import replies
from lmtpd.delivery import Steps, Sync, Transaction, staging_failure
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

if TYPE_CHECKING:
    from lmtpd.server import LmtpServer

log = logging.getLogger(__name__)

# Input held while a delivery is under way before reading stops: a client that
# pipelines past its final dot is allowed a little, not without bound.
HELD_INPUT = 256 * 1024


class Session(asyncio.Protocol):
    """One LMTP connection."""

    ids = itertools.count(1)

    def __init__(self, server: LmtpServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.conn = LMTPConnection(server.config.hostname, server.limits)
        self.name = f"{server.session_prefix}{next(self.ids):x}"
        self.peer = "local"
        self.transport: asyncio.Transport | None = None
        self.txn: Transaction | None = None
        self.messages = itertools.count(1)
        # The task making the current message durable, if any.
        self.delivering: asyncio.Task[None] | None = None
        self.writing_paused = False
        self.reading_paused = False
        self.lost = False
        # Time of the last sign of life: input, a delivery's end, a write resumed.
        self.since = self.loop.time()
        self.timer: asyncio.TimerHandle | None = None
        self.closed: asyncio.Future[None] = self.loop.create_future()

    # The loop's callbacks.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Greet the client, or turn it away when full or shutting down."""
        # uvloop's transports implement asyncio.Transport without deriving from it.
        self.transport = cast(asyncio.Transport, transport)
        self.peer = _peer(transport)
        server = self.server
        if server.stopping or len(server.sessions) >= server.config.lmtp.max_sessions:
            refusal = (
                replies.SHUTTING_DOWN if server.stopping else replies.TOO_MANY_SESSIONS
            )
            self.transport.write(refusal.to_bytes())
            self.transport.close()
            self.lost = True
            return
        server.sessions.add(self)
        log.debug("%s: connect from %s", self.name, self.peer)
        self.conn.send_greeting()
        self._arm_timer()
        self._pump()

    def data_received(self, data: bytes) -> None:
        """Hand input to the core and answer what it makes of it."""
        self.since = self.loop.time()
        self.conn.receive_data(data)
        if self.delivering is None and not self.writing_paused:
            self._pump()
        elif self.conn.pending_input > HELD_INPUT:
            self._pause_reading()

    def eof_received(self) -> bool:
        """The client closed its side: answer what it sent, then close ours."""
        self.conn.receive_data(b"")
        if self.delivering is None and not self.writing_paused:
            self._pump()
        # Keep the transport open for the replies still to come.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection is gone: drop an unfinished body, unless it is being
        made durable, which goes on so that a retry finds it (the dedupe key)."""
        if exc is not None:
            log.info("%s: connection lost from %s", self.name, self.peer)
        self.lost = True
        if self.timer is not None:
            self.timer.cancel()
        if self.delivering is None:
            self._end()

    def pause_writing(self) -> None:
        """The client reads its replies slower than it sends: stop reading."""
        self.writing_paused = True
        self.since = self.loop.time()
        self._pause_reading()

    def resume_writing(self) -> None:
        """The replies are flowing again: go on with the input."""
        self.writing_paused = False
        self.since = self.loop.time()
        if self.delivering is None:
            self._pump()

    # Driving the core.

    @property
    def conn_closed(self) -> bool:
        """True once the transport is closing or gone."""
        return self.transport is None or self.transport.is_closing()

    @property
    def idle(self) -> bool:
        """Between messages: no body coming in and nothing being delivered."""
        txn = self.txn
        return self.delivering is None and (txn is None or txn.staged is None)

    def _pump(self) -> None:
        """Take the core's events; a fault of ours ends the session with a 421."""
        try:
            self._take_events()
        except Exception:
            # Not the client's fault: a temporary failure (RFC 5321 section
            # 3.8), so the client keeps the message and retries it later.
            log.exception("%s: internal error, closing %s", self.name, self.peer)
            if self.delivering is None:
                self._discard()
            self._give_up()

    def _take_events(self) -> None:
        """Take the core's events until it needs input or a delivery starts."""
        conn = self.conn
        while True:
            event = conn.next_event()
            if type(event) is NeedData:
                if self.server.stopping and self.idle:
                    conn.shutdown(replies.SHUTTING_DOWN)
                    continue
                self._flush()
                self._resume_reading()
                return
            if isinstance(event, Quit | ConnectionClosed):
                self._flush()
                self._close()
                return
            self._handle(event)
            if self.delivering is not None or self.writing_paused:
                self._flush()
                return

    def _handle(self, event: Event) -> None:
        if isinstance(event, BodyChunk):
            self._stage(event.data, event.crlf)
        elif isinstance(event, MailFrom):
            self.txn = Transaction(self._queue_id(), event.envelope.mail_from)
        elif isinstance(event, RcptTo):
            self._rcpt(event)
        elif isinstance(event, BodyStart):
            self._body_start()
        elif isinstance(event, MessageComplete):
            self._complete(event)
        elif isinstance(event, BodyAborted):
            log.info("%s: message abandoned (%s)", self._qid(), event.reason.value)
            self._discard()
        elif isinstance(event, Lhlo):
            log.debug("%s: lhlo=%s", self.name, event.session.lhlo_name)

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.conn_closed:
            assert self.transport is not None
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _pause_reading(self) -> None:
        if not self.reading_paused and not self.conn_closed:
            assert self.transport is not None
            self.transport.pause_reading()
            self.reading_paused = True

    def _resume_reading(self) -> None:
        if self.writing_paused:
            return
        if self.reading_paused and not self.conn_closed:
            assert self.transport is not None
            self.transport.resume_reading()
        self.reading_paused = False

    # The events.

    def _rcpt(self, event: RcptTo) -> None:
        if self.txn is None:
            self.txn = Transaction(self._queue_id(), event.envelope.mail_from)
        reply, _ = self.server.deliverer.check_recipient(
            self.txn, event.address, event.envelope.declared_size
        )
        self.conn.answer_rcpt(reply)

    def _body_start(self) -> None:
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

    def _complete(self, event: MessageComplete) -> None:
        txn = self.txn
        if event.defect is not None or txn is None:
            self._discard()
            return
        # The queue id of the MTA, with the recipient, makes a retry after a lost
        # connection a duplicate instead of a second copy.
        ident = self.conn.session.xforward.ident
        steps = self.server.deliverer.finish(txn, ident)
        self.delivering = self.loop.create_task(self._deliver(steps))

    async def _deliver(self, steps: Steps) -> None:
        """Make the message durable, answer it, and go on with the input."""
        try:
            answer = await self._run_steps(steps)
        except asyncio.CancelledError:
            # The grace period of a shutdown is over: nothing was acknowledged.
            self._drop_delivery(self._abort)
            raise
        except Exception:
            # Our fault, not the message's: 421 for the whole connection, so
            # the client keeps the message for every recipient and retries.
            log.exception("%s: delivery failed", self._qid())
            self._drop_delivery(self._give_up)
            return
        self.delivering = None
        self.txn = None
        self.since = self.loop.time()
        if self.lost:
            self._end()
            return
        self.conn.answer_message(answer)
        self._pump()

    def _drop_delivery(self, close: Callable[[], None]) -> None:
        """Forget a delivery that will not be answered; close the connection."""
        self.delivering = None
        self._discard()
        if self.lost:
            self._end()
        else:
            close()

    async def _run_steps(self, steps: Steps) -> list[Reply]:
        """Run a delivery: its Sync steps by the server's fsync, its Blocking
        steps in worker threads, the rest here."""
        server = self.server
        try:
            step = next(steps)
            while True:
                try:
                    if isinstance(step, Sync):
                        value = await server.fsync(step.fds)
                    else:
                        value = await server.in_worker(step.run)
                except asyncio.CancelledError:
                    steps.close()
                    raise
                except Exception as exc:  # handed back to the step that asked
                    step = steps.throw(exc)
                else:
                    step = steps.send(value)
        except StopIteration as done:
            answer: list[Reply] = done.value
            return answer

    # Timeouts and the end.

    def _arm_timer(self) -> None:
        timeout = self.server.config.lmtp.idle_timeout
        self.timer = self.loop.call_at(self.since + timeout, self._timer_fired)

    def _timer_fired(self) -> None:
        timeout = self.server.config.lmtp.idle_timeout
        if self.lost:
            return
        if self.loop.time() - self.since < timeout:
            self._arm_timer()
            return
        if self.delivering is not None:
            # The disk is slow, not the client: wait for it.
            self.since = self.loop.time()
            self._arm_timer()
        elif self.writing_paused:
            # A client that sends on but never reads its replies would hold its
            # session for good: treat it as idle, and drop what is unsent.
            log.info("%s: timeout writing to %s", self.name, self.peer)
            self._abort()
        else:
            log.info("%s: timeout from %s", self.name, self.peer)
            self.conn.shutdown(replies.TIMEOUT)
            self._pump()

    def stop_if_idle(self) -> None:
        """At shutdown: say goodbye now if no message is under way."""
        if self.idle and not self.lost:
            self.conn.shutdown(replies.SHUTTING_DOWN)
            self._pump()

    def abandon(self) -> None:
        """After the shutdown grace period: stop whatever is under way."""
        if self.delivering is not None:
            self.delivering.cancel()
        else:
            self._discard()
            self._abort()

    def _give_up(self) -> None:
        """After a fault of ours: 421 4.3.0 and close, whatever the core's state."""
        if not self.conn_closed:
            assert self.transport is not None
            self.transport.write(replies.INTERNAL_ERROR.to_bytes())
            self.transport.close()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _end(self) -> None:
        self._discard()
        self.server.sessions.discard(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def _discard(self) -> None:
        if self.txn is not None:
            self.txn.discard()
            self.txn = None

    def _queue_id(self) -> str:
        ident = self.conn.session.xforward.ident
        return ident if ident else f"{self.name}.{next(self.messages)}"

    def _qid(self) -> str:
        return self.txn.queue_id if self.txn is not None else self.name


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple):
        return f"{peer[0]}:{peer[1]}"
    return "local"
