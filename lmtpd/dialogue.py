"""The command side of the LMTP core: dialogue state and one handler per verb.

`Dialogue` holds the state of one connection and answers commands; its
subclass `lmtpd.protocol.LMTPConnection` adds input framing and the public
API. Nothing here does I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from types import MappingProxyType

from lmtpd import replies
from lmtpd.body import ChunkDecoder, DataDecoder
from lmtpd.commands import (
    CommandError,
    mail_options,
    parse_bdat,
    parse_mail,
    parse_rcpt,
    parse_xforward,
)
from lmtpd.envelope import BodyType, Envelope, Session, XForward
from lmtpd.events import (
    AbortReason,
    BodyAborted,
    BodyStart,
    ConnectionClosed,
    Event,
    Lhlo,
    MailFrom,
    Quit,
    RcptTo,
)
from lmtpd.replies import Reply
from lmtpd.transaction import Limits, Transaction


class State(Enum):
    """Where the connection stands in the LMTP dialogue."""

    AWAIT_LHLO = "await LHLO"
    IDLE = "idle"
    TRANSACTION = "transaction"
    DATA = "data"
    BDAT = "bdat"
    CLOSED = "closed"


class Awaiting(Enum):
    """Which application answer the core is waiting for, if any."""

    NOTHING = "nothing"
    RCPT = "answer_rcpt"
    BODY_START = "answer_body_start"
    MESSAGE = "answer_message"


class ProtocolUsageError(RuntimeError):
    """The application called the core out of turn (a bug, not a client fault)."""


@dataclass
class OpenChunk:
    """The BDAT chunk being read."""

    size: int
    last: bool
    decoder: ChunkDecoder
    # No transaction with recipients: read and discard (RFC 3030 section 2).
    orphan: bool


class Dialogue:
    """Dialogue state of one connection and the handlers of its commands."""

    def __init__(self, hostname: str, limits: Limits | None = None) -> None:
        """Start a connection; `hostname` names us in the 220, 250 and 221 replies."""
        self._hostname = hostname
        self._limits = limits or Limits()
        self._state = State.AWAIT_LHLO
        self._session = Session()
        self._txn: Transaction | None = None
        self._awaiting = Awaiting.NOTHING
        self._pending_rcpt = ""
        self._pending_chunk: tuple[int, bool] = (0, False)
        self._chunk: OpenChunk | None = None
        self._data = DataDecoder()
        self._buffer = bytearray()
        self._outgoing = bytearray()
        self._events: deque[Event] = deque()
        self._eof = False
        self._skipping = False
        self._handlers: dict[str, Callable[[str], None]] = {
            "LHLO": self._lhlo,
            "MAIL": self._mail,
            "RCPT": self._rcpt,
            "DATA": self._data_command,
            "BDAT": self._bdat,
            "RSET": self._rset,
            "NOOP": self._noop,
            "QUIT": self._quit,
            "VRFY": self._vrfy,
            "HELP": self._help,
            "XFORWARD": self._xforward,
            "HELO": self._helo,
            "EHLO": self._helo,
            "EXPN": self._not_implemented,
        }

    # Commands (RFC 2033 section 4, RFC 5321 section 4.1.1).

    def _lhlo(self, arg: str) -> None:
        if not arg:
            raise CommandError(replies.LHLO_SYNTAX)
        # RFC 5321 section 4.1.4: a new greeting resets the transaction.
        self._end_transaction(AbortReason.RESET)
        self._session = Session(lhlo_name=arg)
        self._state = State.IDLE
        self._reply(replies.lhlo(self._hostname, self._keywords()))
        self._emit(Lhlo(self._session))

    def _keywords(self) -> list[str]:
        size = self._limits.max_message_size
        return [
            "PIPELINING",
            "ENHANCEDSTATUSCODES",
            "8BITMIME",
            # RFC 1870 section 4: no number means no fixed maximum.
            f"SIZE {size}" if size else "SIZE",
            "SMTPUTF8",
            "CHUNKING",
            # RFC 3030 section 3: BODY=BINARYMIME is accepted, so say so.
            "BINARYMIME",
            "XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT",
        ]

    def _mail(self, arg: str) -> None:
        if self._state is State.AWAIT_LHLO:
            raise CommandError(replies.NEED_LHLO)
        if self._txn is not None:
            raise CommandError(replies.NESTED_MAIL)
        path = parse_mail(arg)
        options = mail_options(path.params)
        size = self._limits.max_message_size
        # RFC 1870 section 6.1: refuse at MAIL what is declared too big.
        if size and (options.declared_size or 0) > size:
            raise CommandError(replies.MESSAGE_TOO_BIG)
        if not (path.address.isascii() or options.smtputf8):
            raise CommandError(replies.NON_ASCII_ADDRESS)
        params = MappingProxyType(dict(path.params))
        envelope = Envelope(
            path.address,
            params,
            options.body_type,
            options.smtputf8,
            options.declared_size,
        )
        self._txn = Transaction(envelope)
        self._state = State.TRANSACTION
        self._reply(replies.MAIL_OK)
        self._emit(MailFrom(self._session, envelope))

    def _rcpt(self, arg: str) -> None:
        txn = self._txn
        if txn is None:
            raise CommandError(replies.NEED_MAIL)
        if txn.used_bdat:
            raise CommandError(replies.RCPT_AFTER_BDAT)
        path = parse_rcpt(arg)
        refusal = self._refuse_rcpt(txn, path.address, bool(path.params))
        if refusal is not None:
            raise CommandError(refusal.for_recipient(path.address))
        self._awaiting = Awaiting.RCPT
        self._pending_rcpt = path.address
        self._emit(RcptTo(self._session, txn.envelope, path.address))

    def _refuse_rcpt(
        self, txn: Transaction, address: str, params: bool
    ) -> Reply | None:
        """The reply for a RCPT the core refuses before the application sees it."""
        if params:
            # Limitation: no DSN (RFC 3461), so NOTIFY= and ORCPT= are refused;
            # announcing DSN and keeping those values in the envelope would lift it.
            return replies.UNKNOWN_PARAMETER
        if not (address.isascii() or txn.envelope.smtputf8):
            return replies.NON_ASCII_ADDRESS
        if len(txn.envelope.rcpt_tos) >= self._limits.max_recipients:
            # RFC 5321 section 4.5.3.1.10: over the limit is 452, not 552.
            return replies.TOO_MANY_RECIPIENTS
        return None

    def _data_command(self, arg: str) -> None:
        if arg:
            raise CommandError(replies.SYNTAX_ERROR)
        txn = self._txn
        if txn is None:
            raise CommandError(replies.NEED_MAIL)
        if txn.used_bdat:
            # RFC 3030 section 2: DATA and BDAT never share a transaction.
            raise CommandError(replies.DATA_AFTER_BDAT)
        if txn.envelope.body_type is BodyType.BINARY_MIME:
            raise CommandError(replies.BINARYMIME_NEEDS_BDAT)
        if not txn.envelope.rcpt_tos:
            # RFC 2033 section 4.2: DATA with no accepted recipient is 503.
            raise CommandError(replies.NO_RECIPIENTS)
        self._awaiting = Awaiting.BODY_START
        self._emit(BodyStart(self._session, txn.envelope, chunking=False))

    def _bdat(self, arg: str) -> None:
        size, last = parse_bdat(arg)
        txn = self._txn
        if txn is None or not txn.envelope.rcpt_tos:
            self._begin_chunk(size, last, orphan=True)
        elif txn.used_bdat:
            self._begin_chunk(size, last, orphan=False)
        else:
            txn.used_bdat = True
            self._pending_chunk = (size, last)
            self._awaiting = Awaiting.BODY_START
            self._emit(BodyStart(self._session, txn.envelope, chunking=True))

    def _begin_chunk(self, size: int, last: bool, orphan: bool) -> None:
        txn = self._txn
        decoder = txn.chunks if txn and not orphan else ChunkDecoder()
        decoder.start(size)
        self._chunk = OpenChunk(size, last, decoder, orphan)
        self._state = State.BDAT

    def _rset(self, arg: str) -> None:
        if arg:
            raise CommandError(replies.SYNTAX_ERROR)
        self._end_transaction(AbortReason.RESET)
        self._reply(replies.OK)

    def _noop(self, arg: str) -> None:
        self._reply(replies.OK)

    def _quit(self, arg: str) -> None:
        self._reply(replies.closing(self._hostname))
        self._end_transaction(AbortReason.QUIT)
        self._state = State.CLOSED
        self._buffer.clear()
        self._emit(Quit())

    def _vrfy(self, arg: str) -> None:
        # RFC 5321 section 3.5.3: 252 reveals nothing about our users.
        if not arg:
            raise CommandError(replies.VRFY_SYNTAX)
        self._reply(replies.CANNOT_VRFY)

    def _help(self, arg: str) -> None:
        self._reply(replies.HELP)

    def _xforward(self, arg: str) -> None:
        if self._state is State.AWAIT_LHLO:
            raise CommandError(replies.NEED_LHLO)
        if self._txn is not None:
            # XFORWARD_README: not allowed between MAIL and the end of DATA.
            raise CommandError(replies.XFORWARD_IN_TRANSACTION)
        xforward = parse_xforward(arg, self._session.xforward)
        self._session = replace(self._session, xforward=xforward)
        self._reply(replies.OK)

    def _helo(self, arg: str) -> None:
        # RFC 2033 section 4.1: an LMTP server must not accept HELO or EHLO.
        self._reply(replies.HELO_REFUSED)

    def _not_implemented(self, arg: str) -> None:
        self._reply(replies.NOT_IMPLEMENTED)

    def _unknown(self, arg: str) -> None:
        self._reply(replies.UNKNOWN_COMMAND)

    # Transaction and connection bookkeeping.

    def _end_transaction(self, reason: AbortReason) -> None:
        """Drop the open transaction; tell the application if a body was open."""
        txn = self._txn
        if txn is not None and txn.body_open:
            self._emit(BodyAborted(self._session, txn.envelope, reason))
        self._chunk = None
        self._finish_transaction()

    def _finish_transaction(self) -> None:
        """Back to no transaction (RFC 2033 section 4.2: envelope cleared)."""
        self._txn = None
        # The MTA sends XFORWARD again before each MAIL; nothing carries over.
        self._session = replace(self._session, xforward=XForward())
        if self._state is not State.CLOSED:
            self._state = self._rest_state()

    def _rest_state(self) -> State:
        if self._txn is not None:
            return State.TRANSACTION
        return State.AWAIT_LHLO if self._session.lhlo_name is None else State.IDLE

    def _close(self, reason: AbortReason) -> None:
        self._end_transaction(reason)
        self._state = State.CLOSED
        self._buffer.clear()
        self._emit(ConnectionClosed())

    def _transaction(self) -> Transaction:
        if self._txn is None:
            raise ProtocolUsageError("no mail transaction is open")
        return self._txn

    def _current_chunk(self) -> OpenChunk:
        if self._chunk is None:
            raise ProtocolUsageError("no BDAT chunk is being read")
        return self._chunk

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _reply(self, reply: Reply) -> None:
        self._outgoing += reply.to_bytes()

    def _reply_all(self, outcome: list[Reply]) -> None:
        for reply in outcome:
            self._reply(reply)
