"""The POP3 protocol core (RFC 1939, 2449, 2595, 5034): bytes in, events out, no I/O.

`POP3Connection` holds one connection. The I/O layer feeds it what it
reads and writes what it produces; the application checks passwords and
reads the maildrop by answering events. A driving loop looks like this:

    conn = POP3Connection(Settings("pop.example", tls_available=True),
                          plaintext_allowed=False)
    conn.send_greeting()
    while True:
        event = conn.next_event()
        write(conn.data_to_send())                 # flush before waiting
        if isinstance(event, NeedData):
            conn.receive_data(read())              # b"" on end of file
        elif isinstance(event, StartTLS):
            handshake()
            conn.tls_started()
        elif isinstance(event, Authenticate):
            conn.answer_auth(app.login(event))     # a Maildrop or an -ERR
        elif isinstance(event, RetrieveMessage):
            for chunk in app.open(event):
                if not conn.feed_message(chunk):   # False: TOP has enough
                    break
                write(conn.data_to_send())         # memory stays at one chunk
            conn.finish_message()
        elif isinstance(event, Update):
            conn.answer_update(app.remove(event.deleted))   # None or an -ERR
        elif isinstance(event, ConnectionClosed):
            app.release(event)                     # DROPPED: delete nothing
            break

While an Authenticate, RetrieveMessage, Update or StartTLS awaits its
answer, next_event() raises ProtocolUsageError: pipelined commands wait
until the application has answered, and run in order (RFC 2449 section
6.6). Input is consumed only as events are taken, so the I/O layer should
read only on NeedData; the core then holds at most one receive buffer.

The autologout timer (RFC 1939 section 3) is the I/O layer's: on expiry
call shutdown() with no response. A failed write or TLS handshake is
connection_lost().
"""

from __future__ import annotations

from dataclasses import replace

from pop3proxy import responses
from pop3proxy.commands import CommandError, parse_command
from pop3proxy.content import ContentEncoder
from pop3proxy.dialogue import Awaiting, Dialogue, ProtocolUsageError, Settings, State
from pop3proxy.events import CloseReason, Event, NeedData
from pop3proxy.maildrop import DropView, Maildrop, SessionStats
from pop3proxy.responses import Response

__all__ = ["Awaiting", "POP3Connection", "ProtocolUsageError", "Settings", "State"]


class POP3Connection(Dialogue):
    """One POP3 server connection, driven by receive_data() and next_event()."""

    # Public API: state.

    @property
    def state(self) -> State:
        """The current session state."""
        return self._state

    @property
    def awaiting(self) -> Awaiting:
        """Which answer the core waits for before it reads on."""
        return self._awaiting

    @property
    def user(self) -> str | None:
        """The user the session acts as (the authzid, if one was given); None before."""
        return self._user

    @property
    def tls_active(self) -> bool:
        """True once the connection is encrypted."""
        return self._tls_active

    @property
    def failed_logins(self) -> int:
        """How many logins the application refused on this connection."""
        return self._failed_logins

    @property
    def stats(self) -> SessionStats:
        """Counts and octets so far, for the logout log line."""
        return self._tally.into(self._stats)

    @property
    def pending_input(self) -> int:
        """Octets received but not yet consumed (bounded by one receive buffer)."""
        return len(self._buffer)

    # Public API: bytes.

    def send_greeting(self) -> None:
        """Queue the +OK banner; call once, right after the connection opens."""
        self._reply(responses.greeting(self._settings.hostname))

    def receive_data(self, data: bytes) -> None:
        """Add bytes read from the client; b"" means the client closed."""
        if self._eof:
            raise ProtocolUsageError("receive_data() after end of file")
        if not data:
            self._eof = True
        elif self._awaiting is not Awaiting.TLS and self._state is not State.CLOSED:
            # Between STLS and tls_started() bytes can only be cleartext
            # sent before the handshake: they are dropped, never run.
            self._buffer += data

    def data_to_send(self) -> bytes:
        """Take the output queued so far, in order, ready for the wire."""
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def output_size(self) -> int:
        """How many octets are queued for the wire."""
        return len(self._outgoing)

    def next_event(self) -> Event:
        """Process input until there is an event for the application."""
        if self._awaiting is not Awaiting.NOTHING and not self._events:
            raise ProtocolUsageError(f"call {self._awaiting.value}() first")
        while not self._events:
            self._step()
        return self._events.popleft()

    # Public API: answers.

    def tls_started(self) -> None:
        """The TLS handshake after STLS succeeded: back to a fresh AUTHORIZATION."""
        if not self._expect(Awaiting.TLS):
            return
        self._tls_active = True
        self._plaintext_allowed = True
        self._buffer.clear()

    def answer_auth(self, result: Maildrop | Response) -> None:
        """Answer Authenticate: the user's Maildrop, or an -ERR that refuses."""
        if isinstance(result, Response) and result.ok:
            raise ValueError("a refused login is answered with an -ERR response")
        if not self._expect(Awaiting.AUTH):
            return
        if isinstance(result, Response):
            self._failed_logins += 1
            self._reply(result)
            return
        self._drop = DropView(result)
        self._user = self._login_user
        self._state = State.TRANSACTION
        count, octets = self._drop.total
        self._stats = SessionStats(messages=count, size=octets)
        self._reply(responses.logged_in(count, octets))

    def feed_message(self, data: bytes) -> bool:
        """Send the next chunk of the message; False once no more is wanted."""
        encoder = self._message_encoder()
        if encoder is None:
            return False
        self._open_message()
        self._outgoing += encoder.encode(data)
        return not encoder.done

    def send_message(self, data: bytes | bytearray) -> None:
        """Send the whole message at once: feed_message(data), then finish_message()."""
        encoder = self._message_encoder()
        if encoder is None:
            return
        self._open_message()
        self._outgoing += encoder.encode_whole(data)
        whole = self._retrieval is None or self._retrieval.body_lines is None
        self._tally.add(whole, encoder.octets)
        self._end_message()

    def finish_message(self) -> None:
        """End the message RetrieveMessage asked for (the whole of it was fed)."""
        encoder = self._message_encoder()
        if encoder is None:
            return
        self._open_message()
        self._outgoing += encoder.finish()
        whole = self._retrieval is None or self._retrieval.body_lines is None
        self._tally.add(whole, encoder.octets)
        self._end_message()

    def abort_message(self, response: Response) -> None:
        """The message cannot be read: -ERR if nothing was sent, else close.

        Once the +OK went out, no -ERR can follow; only closing the
        connection keeps the client from taking a truncated message as
        whole (RFC 1939 section 3 ends a response only with "." CRLF).
        """
        if response.ok:
            raise ValueError("a message is refused with an -ERR response")
        if self._message_encoder() is None:
            return
        head_sent = self._head_sent
        self._end_message()
        if head_sent:
            self._close(CloseReason.ABORTED)
        else:
            self._reply(response)

    def answer_update(self, failure: Response | None) -> None:
        """Answer Update: None once every marked message is removed, else an -ERR."""
        if failure is not None and failure.ok:
            raise ValueError("a failed update is answered with an -ERR response")
        if not self._expect(Awaiting.UPDATE):
            return
        if failure is None:
            removed = len(self._maildrop().marked())
            self._stats = replace(self._stats, deleted=removed)
            self._reply(responses.closing(self._settings.hostname))
        else:
            self._reply(failure)
        self._close(CloseReason.QUIT)

    def shutdown(self, response: Response | None = None) -> None:
        """End the connection now, with an -ERR first if one is given.

        No response for the autologout timer (RFC 1939 section 3); none can
        be sent in the middle of a message either.
        """
        if response is not None and response.ok:
            raise ValueError("shutdown() takes an -ERR response")
        if self._state is State.CLOSED:
            return
        if response is not None and not self._head_sent_pending():
            self._reply(response)
        self._close(CloseReason.SHUTDOWN)

    def connection_lost(self) -> None:
        """The transport is gone; pending answers are no longer wanted.

        After QUIT the UPDATE state still completes (RFC 1939 section 6 only
        spares sessions that end without QUIT), so answer_update() is awaited.
        """
        self._eof = True
        if self._state is State.CLOSED or self._awaiting is Awaiting.UPDATE:
            return
        self._close(CloseReason.DROPPED)

    # Reading lines.

    def _step(self) -> None:
        if self._state is State.CLOSED:
            self._emit(self._closed_event())
            return
        line = self._take_line()
        if line is None:
            self._wait_for_data()
            return
        try:
            self._run_line(line)
        except CommandError as error:
            self._reply(error.response)

    def _run_line(self, line: bytes) -> None:
        if self._sasl_pending:
            # Base64 is case-sensitive and no command: taken as it is; a
            # non-ASCII octet fails the Base64 check.
            self._sasl_pending = False
            self._sasl_line(line.decode("latin-1"))
            return
        command = parse_command(line)
        self._dispatch(command.verb, command.arg)

    def _take_line(self) -> bytes | None:
        """Cut one CRLF-terminated line off the buffer, if complete.

        A line over the limit is answered once and skipped up to its CRLF
        without being run, so the buffer never holds more than a limit.
        """
        while not self._skipping or self._skip_line():
            limit = self._line_limit()
            end = self._buffer.find(b"\r\n", 0, limit)
            if end != -1:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 2]
                return line
            if len(self._buffer) < limit:
                return None
            self._line_too_long()
        return None

    def _line_limit(self) -> int:
        """RFC 5034 section 4: AUTH lines may be longer than commands."""
        if self._sasl_pending or self._buffer[:5].upper() == b"AUTH ":
            return self._settings.max_auth_line
        return self._settings.max_command_line

    def _line_too_long(self) -> None:
        self._reply(responses.LINE_TOO_LONG)
        self._skipping = True
        self._sasl_pending = False
        self._pending_user = None

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

    def _wait_for_data(self) -> None:
        if self._eof:
            self._close(CloseReason.DROPPED)
        else:
            self._emit(NeedData())

    # Answers in turn.

    def _expect(self, awaiting: Awaiting) -> bool:
        """Check an answer comes in turn; False if the connection has closed."""
        if self._state is State.CLOSED:
            return False
        if self._awaiting is not awaiting:
            raise ProtocolUsageError(f"{awaiting.value}() is not expected now")
        self._awaiting = Awaiting.NOTHING
        return True

    def _message_encoder(self) -> ContentEncoder | None:
        """The encoder of the message being sent; None if the connection closed."""
        if self._state is State.CLOSED:
            return None
        if self._awaiting is not Awaiting.MESSAGE or self._encoder is None:
            raise ProtocolUsageError("no RetrieveMessage is being answered")
        return self._encoder

    def _open_message(self) -> None:
        """Queue the +OK before the first octet of the message."""
        if self._head_sent or self._retrieval is None:
            return
        self._head_sent = True
        if self._retrieval.body_lines is None:
            self._send(responses.message_follows_line(self._retrieval.size))
        else:
            self._reply(responses.TOP_FOLLOWS)

    def _end_message(self) -> None:
        self._encoder = None
        self._retrieval = None
        self._head_sent = False
        self._awaiting = Awaiting.NOTHING

    def _head_sent_pending(self) -> bool:
        """True while a multi-line message response is open on the wire."""
        return self._awaiting is Awaiting.MESSAGE and self._head_sent
