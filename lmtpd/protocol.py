"""The LMTP protocol core (RFC 2033): bytes in, events out, no I/O.

`LMTPConnection` holds one connection. The I/O layer feeds it what it reads
and writes what it produces; the application decides recipients and
delivery by answering events. A driving loop looks like this:

    conn = LMTPConnection("mx.example", Limits())
    conn.send_greeting()
    while True:
        event = conn.next_event()
        if isinstance(event, NeedData):
            write(conn.data_to_send())           # flush before reading
            conn.receive_data(read())            # b"" on end of file
        elif isinstance(event, RcptTo):
            conn.answer_rcpt(app.check_recipient(event))
        elif isinstance(event, BodyStart):
            conn.answer_body_start(app.open_body(event))   # None or a Reply
        elif isinstance(event, BodyChunk):
            app.write(event.data)
        elif isinstance(event, MessageComplete) and event.defect is None:
            conn.answer_message(app.deliver(event))  # one Reply per recipient
        elif isinstance(event, (MessageComplete, BodyAborted)):
            app.discard()
        elif isinstance(event, (Quit, ConnectionClosed)):
            write(conn.data_to_send())
            break

While an RcptTo, BodyStart or (defect-free) MessageComplete awaits its
answer, next_event() raises ProtocolUsageError: the core reads nothing more
until the application has decided. Input is consumed only as events are
taken, so the I/O layer should read only on NeedData; then the core holds
at most one receive buffer, whatever the message size.

Replies are queued in command order and are for data_to_send(). The I/O
layer sends the 421 replies of the table for timeouts and session limits
with shutdown(reply).
"""

from __future__ import annotations

from collections.abc import Sequence

from lmtpd import replies
from lmtpd.body import DataDecoder
from lmtpd.commands import CommandError, parse_command
from lmtpd.dialogue import Awaiting, Dialogue, OpenChunk, ProtocolUsageError, State
from lmtpd.envelope import Envelope, Session
from lmtpd.events import (
    AbortReason,
    BodyChunk,
    ConnectionClosed,
    Event,
    MessageComplete,
    NeedData,
)
from lmtpd.replies import Reply
from lmtpd.transaction import DEFECT_REPLIES, Limits, Transaction

__all__ = ["Awaiting", "LMTPConnection", "Limits", "ProtocolUsageError", "State"]


class LMTPConnection(Dialogue):
    """One LMTP server connection, driven by receive_data() and next_event()."""

    # Public API.

    @property
    def state(self) -> State:
        """The current dialogue state."""
        return self._state

    @property
    def session(self) -> Session:
        """What the client has told us about itself so far."""
        return self._session

    @property
    def envelope(self) -> Envelope | None:
        """The open transaction's envelope, or None outside a transaction."""
        return self._txn.envelope if self._txn else None

    @property
    def pending_input(self) -> int:
        """Octets received but not yet consumed (bounded by one receive buffer)."""
        return len(self._buffer)

    def send_greeting(self) -> None:
        """Queue the 220 banner; call once, right after the connection opens."""
        self._reply(replies.greeting(self._hostname))

    def receive_data(self, data: bytes) -> None:
        """Add bytes read from the client; b"" means the client closed."""
        if self._eof:
            raise ProtocolUsageError("receive_data() after end of file")
        if not data:
            self._eof = True
        elif self._state is not State.CLOSED:
            self._buffer += data

    def data_to_send(self) -> bytes:
        """Take the replies queued so far, in order, ready for the wire."""
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def next_event(self) -> Event:
        """Process input until there is an event for the application."""
        if self._awaiting is not Awaiting.NOTHING and not self._events:
            raise ProtocolUsageError(f"call {self._awaiting.value}() first")
        while not self._events:
            self._step()
        return self._events.popleft()

    def answer_rcpt(self, reply: Reply) -> None:
        """Answer RcptTo: a 2xx reply accepts the recipient, 4xx/5xx refuses it."""
        if not self._expect(Awaiting.RCPT, reply):
            return
        txn = self._transaction()
        if reply.is_success:
            txn.add_recipient(self._pending_rcpt)
        self._reply(reply.for_recipient(self._pending_rcpt))

    def answer_body_start(self, refusal: Reply | None) -> None:
        """Answer BodyStart: None to go ahead, or a 4xx/5xx reply to refuse."""
        if refusal is not None and not refusal.is_failure:
            raise ValueError("a body is refused with a 4xx or 5xx reply")
        if not self._expect(Awaiting.BODY_START, refusal):
            return
        txn = self._transaction()
        if txn.used_bdat:
            txn.start_body(self._limits, refusal)
            self._begin_chunk(*self._pending_chunk, orphan=False)
        elif refusal is not None:
            self._reply(refusal)
        else:
            txn.start_body(self._limits, None)
            self._reply(replies.START_INPUT)
            self._data = DataDecoder()
            self._state = State.DATA

    def answer_message(self, outcome: Sequence[Reply]) -> None:
        """Answer MessageComplete with one reply per recipient, in RCPT order."""
        if not self._expect(Awaiting.MESSAGE, *outcome):
            return
        txn = self._transaction()
        if len(outcome) != len(txn.envelope.rcpt_tos):
            raise ValueError("answer_message() needs one reply per recipient")
        for reply, rcpt in zip(outcome, txn.envelope.rcpt_tos, strict=True):
            self._reply(reply.for_recipient(rcpt))
        txn.body_open = False
        self._finish_transaction()

    def shutdown(self, reply: Reply) -> None:
        """Send `reply` (a 421 from the table) and end the connection."""
        if self._state is State.CLOSED:
            return
        self._awaiting = Awaiting.NOTHING
        self._reply(reply)
        self._close(AbortReason.SHUTDOWN)

    # Reading: one framing mode per step.

    def _step(self) -> None:
        """Consume input in the current framing mode until something happens."""
        if self._state is State.CLOSED:
            self._emit(ConnectionClosed())
        elif self._state is State.DATA:
            self._read_data()
        elif self._state is State.BDAT:
            self._read_chunk()
        else:
            self._read_command()

    def _read_command(self) -> None:
        line = self._take_line()
        if line is None:
            self._wait_for_data()
            return
        try:
            command = parse_command(line)
            self._handlers.get(command.verb, self._unknown)(command.arg)
        except CommandError as error:
            self._reply(error.reply)

    def _take_line(self) -> bytes | None:
        """Cut one CRLF-terminated command line off the buffer, if complete.

        A line over the limit is answered once and then skipped up to its
        CRLF without being run, so the buffer never holds more than a limit.
        """
        limit = self._limits.max_command_line
        while not self._skipping or self._skip_line():
            end = self._buffer.find(b"\r\n", 0, limit)
            if end != -1:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 2]
                return line
            if len(self._buffer) < limit:
                return None
            self._reply(replies.COMMAND_TOO_LONG)
            self._skipping = True
        return None

    def _skip_line(self) -> bool:
        """Drop input up to the next CRLF; True once it has been found."""
        end = self._buffer.find(b"\r\n")
        if end == -1:
            held = 1 if self._buffer.endswith(b"\r") else 0
            del self._buffer[: len(self._buffer) - held]
            return False
        del self._buffer[: end + 2]
        self._skipping = False
        return True

    def _read_data(self) -> None:
        txn = self._transaction()
        content, used = self._data.decode(self._buffer, txn.keeping)
        del self._buffer[:used]
        self._pass_on(txn, content, crlf=True)
        if self._data.finished:
            self._end_body(txn)
        elif not used:
            self._wait_for_data()

    def _read_chunk(self) -> None:
        chunk = self._current_chunk()
        keep = not chunk.orphan and self._transaction().keeping
        content, used = chunk.decoder.decode(self._buffer, keep)
        del self._buffer[:used]
        if not chunk.orphan:
            self._pass_on(self._transaction(), content)
        if chunk.decoder.remaining == 0:
            self._end_chunk(chunk)
        elif not used:
            self._wait_for_data()

    def _pass_on(self, txn: Transaction, content: bytes, crlf: bool = False) -> None:
        """Check decoded octets and hand them out while the body is sound."""
        if content:
            txn.check.feed(content)
            if txn.check.defect is None:
                self._emit(BodyChunk(content, crlf))

    def _wait_for_data(self) -> None:
        if self._eof:
            self._close(AbortReason.CONNECTION_CLOSED)
        else:
            self._emit(NeedData())

    def _end_chunk(self, chunk: OpenChunk) -> None:
        """Answer a chunk once all its octets are in (RFC 3030 section 2)."""
        self._chunk = None
        txn = self._txn
        self._state = self._rest_state()
        if not chunk.orphan and chunk.last and txn is not None:
            self._pass_on(txn, chunk.decoder.flush())
            self._end_body(txn)
        else:
            # An orphan chunk (no MAIL, or no successful RCPT) gets one 503, the
            # LAST one too: RFC 2033 section 4.2 fails DATA that way, and BDAT LAST
            # is DATA's counterpart; zero replies would leave the client waiting.
            self._reply(self._chunk_reply(chunk))
            if chunk.last and txn is not None:
                self._finish_transaction()

    def _chunk_reply(self, chunk: OpenChunk) -> Reply:
        if not chunk.orphan:
            return replies.chunk_received(chunk.size)
        return replies.NEED_MAIL if self._txn is None else replies.NO_RECIPIENTS

    def _end_body(self, txn: Transaction) -> None:
        """The body is complete: answer a refused one, else ask the application."""
        self._state = State.TRANSACTION
        if txn.refusal is not None:
            self._reply_all(txn.per_recipient(txn.refusal))
            self._finish_transaction()
            return
        defect = txn.check.defect
        self._emit(MessageComplete(self._session, txn.envelope, defect, txn.check.size))
        if defect is None:
            self._awaiting = Awaiting.MESSAGE
            return
        self._reply_all(txn.per_recipient(DEFECT_REPLIES[defect]))
        txn.body_open = False
        self._finish_transaction()

    def _expect(self, awaiting: Awaiting, *answers: Reply | None) -> bool:
        """Check an answer comes in turn; False if the connection has closed."""
        if self._state is State.CLOSED:
            return False
        if self._awaiting is not awaiting:
            raise ProtocolUsageError(f"{awaiting.value}() is not expected now")
        if any(reply is not None and 300 <= reply.code < 400 for reply in answers):
            raise ValueError("answers are 2xx, 4xx or 5xx replies")
        self._awaiting = Awaiting.NOTHING
        return True
