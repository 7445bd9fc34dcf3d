"""The command side of the POP3 core: session state and one handler per command.

`Dialogue` holds the state of one connection and answers commands; its
subclass `pop3proxy.protocol.POP3Connection` adds line framing and the
public API. Nothing here does I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from pop3proxy import responses
from pop3proxy.commands import (
    CommandError,
    decode_plain,
    no_argument,
    one_number,
    optional_number,
    parse_top,
    words,
)
from pop3proxy.content import ContentEncoder
from pop3proxy.events import (
    Authenticate,
    CloseReason,
    ConnectionClosed,
    Event,
    LoginMethod,
    RetrieveMessage,
    StartTLS,
    Update,
)
from pop3proxy.maildrop import DropView, MessageInfo, RetrievalTally, SessionStats
from pop3proxy.responses import Response, multiline

_TRANSACTION_ONLY = frozenset(
    ("STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL")
)
_AUTHORIZATION_ONLY = frozenset(("USER", "PASS", "AUTH", "STLS", "APOP"))


class State(Enum):
    """Where the session stands (RFC 1939 section 3)."""

    AUTHORIZATION = "authorization"
    TRANSACTION = "transaction"
    UPDATE = "update"
    CLOSED = "closed"


class Awaiting(Enum):
    """Which application call the core is waiting for, if any."""

    NOTHING = "nothing"
    AUTH = "answer_auth"
    MESSAGE = "finish_message"
    UPDATE = "answer_update"
    TLS = "tls_started"


class ProtocolUsageError(RuntimeError):
    """The application called the core out of turn (a bug, not a client fault)."""


@dataclass(frozen=True)
class Settings:
    """What the server offers; the same for every connection of a listener.

    Line limits count the CRLF. RFC 2449 section 4 sets 255 octets for
    commands; RFC 5034 section 4 lifts it for AUTH lines, which must hold
    what the mechanism needs: a PLAIN response of three 255-octet fields
    is 1,024 octets of Base64.
    """

    hostname: str
    implementation: str = "mdmail"
    tls_available: bool = False
    login_delay: int | None = None
    expire_days: int | None = None
    max_command_line: int = 255
    max_auth_line: int = 2048


class Dialogue:
    """Session state of one connection and the handlers of its commands."""

    def __init__(
        self, settings: Settings, *, plaintext_allowed: bool, tls_active: bool = False
    ) -> None:
        """Start a connection; `plaintext_allowed` says if passwords may come now.

        The I/O layer knows whether the connection is encrypted (implicit TLS
        sets `tls_active`) or comes from a trusted address.
        """
        self._settings = settings
        self._plaintext_allowed = plaintext_allowed
        self._tls_active = tls_active
        self._state = State.AUTHORIZATION
        self._awaiting = Awaiting.NOTHING
        self._pending_user: str | None = None
        self._sasl_pending = False
        self._login_user = ""
        self._user: str | None = None
        self._drop: DropView | None = None
        self._encoder: ContentEncoder | None = None
        self._retrieval: RetrieveMessage | None = None
        self._head_sent = False
        self._stats = SessionStats()
        self._tally = RetrievalTally()
        self._failed_logins = 0
        self._close_reason = CloseReason.DROPPED
        self._buffer = bytearray()
        self._outgoing = bytearray()
        self._events: deque[Event] = deque()
        self._eof = False
        self._skipping = False
        self._authorization: dict[str, Callable[[str], None]] = {
            "USER": self._user_command,
            "PASS": self._pass,
            "AUTH": self._auth,
            "STLS": self._stls,
            "CAPA": self._capa,
            "QUIT": self._quit,
        }
        self._transaction: dict[str, Callable[[str], None]] = {
            "STAT": self._stat,
            "LIST": self._list,
            "RETR": self._retr,
            "DELE": self._dele,
            "NOOP": self._noop,
            "RSET": self._rset,
            "TOP": self._top,
            "UIDL": self._uidl,
            "CAPA": self._capa,
            "QUIT": self._quit,
        }

    def _dispatch(self, verb: str, arg: str) -> None:
        """Run a command valid in this state; -ERR for any other (section 3)."""
        in_authorization = self._state is State.AUTHORIZATION
        handlers = self._authorization if in_authorization else self._transaction
        handler = handlers.get(verb)
        # RFC 1939 section 7: PASS is valid only right after a successful USER.
        if verb != "PASS":
            self._pending_user = None
        if handler is None:
            raise CommandError(self._misplaced(verb))
        handler(arg)

    def _misplaced(self, verb: str) -> Response:
        if verb in _TRANSACTION_ONLY and self._state is State.AUTHORIZATION:
            return responses.NOT_LOGGED_IN
        if verb in _AUTHORIZATION_ONLY and self._state is State.TRANSACTION:
            return responses.ALREADY_LOGGED_IN
        return responses.UNKNOWN_COMMAND

    # AUTHORIZATION (RFC 1939 sections 4 and 7, RFC 5034, RFC 2595 section 4).

    def _user_command(self, arg: str) -> None:
        self._refuse_plaintext()
        name = arg.strip(" ")
        if not name:
            raise CommandError(responses.USER_SYNTAX)
        # The same reply for every name: nothing tells which mailboxes exist.
        self._pending_user = name
        self._reply(responses.SEND_PASS)

    def _pass(self, arg: str) -> None:
        self._refuse_plaintext()
        user, self._pending_user = self._pending_user, None
        if user is None:
            raise CommandError(responses.NEED_USER)
        if not arg:
            raise CommandError(responses.PASS_SYNTAX)
        self._ask_auth(Authenticate(user, arg, "", LoginMethod.USER_PASS))

    def _auth(self, arg: str) -> None:
        given = words(arg)
        if not given:
            # Before RFC 5034, clients asked for the list with a bare AUTH.
            plain = ["PLAIN"] if self._plaintext_allowed else []
            self._send(multiline(responses.MECHANISMS, plain))
            return
        if len(given) > 2:
            raise CommandError(responses.AUTH_SYNTAX)
        if given[0].upper() != "PLAIN":
            raise CommandError(responses.UNSUPPORTED_MECHANISM)
        self._refuse_plaintext()
        if len(given) == 2:
            self._plain_response(given[1])
        else:
            self._sasl_pending = True
            self._send(responses.CONTINUATION)

    def _sasl_line(self, line: str) -> None:
        """The client's answer to our empty PLAIN challenge."""
        # RFC 5034 section 4: "*" cancels, and the AUTH command fails.
        if line == "*":
            raise CommandError(responses.AUTH_CANCELLED)
        self._plain_response(line)

    def _plain_response(self, text: str) -> None:
        plain = decode_plain(text)
        method = LoginMethod.SASL_PLAIN
        self._ask_auth(
            Authenticate(plain.authcid, plain.password, plain.authzid, method)
        )

    def _refuse_plaintext(self) -> None:
        """RFC 2595 section 2.3: no cleartext password unless allowed now."""
        if self._plaintext_allowed:
            return
        offer = self._stls_offered()
        raise CommandError(
            responses.USE_STLS if offer else responses.PLAINTEXT_DISALLOWED
        )

    def _ask_auth(self, request: Authenticate) -> None:
        # RFC 4616 section 2: the session acts as the authorization identity,
        # which is the authentication identity when none is given.
        self._login_user = request.authzid or request.user
        self._awaiting = Awaiting.AUTH
        self._emit(request)

    def _stls(self, arg: str) -> None:
        no_argument(arg)
        if self._tls_active:
            raise CommandError(responses.TLS_ACTIVE)
        if not self._settings.tls_available:
            raise CommandError(responses.TLS_UNAVAILABLE)
        self._reply(responses.BEGIN_TLS)
        # RFC 2595 section 4: the client sends nothing more until the
        # handshake is done, so whatever follows STLS came in the clear and
        # may have been injected; running it after the handshake would
        # credit it to the encrypted session.
        self._buffer.clear()
        self._skipping = False
        self._awaiting = Awaiting.TLS
        self._emit(StartTLS())

    def _stls_offered(self) -> bool:
        return self._settings.tls_available and not self._tls_active

    def _capa(self, arg: str) -> None:
        self._send(multiline(responses.CAPABILITIES, self._capabilities()))

    def _capabilities(self) -> list[str]:
        """RFC 2449 section 6; RFC 2595 section 4: the list may change after TLS."""
        settings = self._settings
        login = self._state is State.AUTHORIZATION
        capabilities = ["TOP", "UIDL"]
        if login and self._plaintext_allowed:
            capabilities += ["USER", "SASL PLAIN"]
        capabilities += ["RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if login and self._stls_offered():
            capabilities.append("STLS")
        expire = settings.expire_days
        capabilities.append(f"EXPIRE {'NEVER' if expire is None else expire}")
        if settings.login_delay is not None:
            capabilities.append(f"LOGIN-DELAY {settings.login_delay}")
        if settings.implementation:
            capabilities.append(f"IMPLEMENTATION {settings.implementation}")
        return capabilities

    def _quit(self, arg: str) -> None:
        self._buffer.clear()
        if self._state is State.AUTHORIZATION:
            # RFC 1939 section 4: QUIT before login ends without UPDATE.
            self._reply(responses.closing(self._settings.hostname))
            self._close(CloseReason.QUIT)
            return
        self._state = State.UPDATE
        self._awaiting = Awaiting.UPDATE
        self._emit(Update(self._maildrop().marked()))

    # TRANSACTION (RFC 1939 section 5 and 7).

    def _stat(self, arg: str) -> None:
        no_argument(arg)
        self._reply(responses.drop_listing(*self._maildrop().live))

    def _list(self, arg: str) -> None:
        number = optional_number(arg)
        if number is not None:
            self._reply(responses.one_listing(number, self._message(number).size))
            return
        drop = self._maildrop()
        lines = drop.numbered("size")
        self._send(multiline(responses.scan_listing(*drop.live), lines))

    def _uidl(self, arg: str) -> None:
        number = optional_number(arg)
        if number is not None:
            self._reply(responses.one_listing(number, self._message(number).uid))
            return
        lines = self._maildrop().numbered("uid")
        self._send(multiline(responses.UIDL_FOLLOWS, lines))

    def _retr(self, arg: str) -> None:
        number = one_number(arg)
        self._retrieve(number, self._message(number), None)

    def _top(self, arg: str) -> None:
        number, body_lines = parse_top(arg)
        self._retrieve(number, self._message(number), body_lines)

    def _retrieve(self, number: int, message: MessageInfo, lines: int | None) -> None:
        self._encoder = ContentEncoder(lines)
        self._retrieval = RetrieveMessage(number, message.uid, message.size, lines)
        self._head_sent = False
        self._awaiting = Awaiting.MESSAGE
        self._emit(self._retrieval)

    def _dele(self, arg: str) -> None:
        number = one_number(arg)
        if not self._maildrop().mark(number):
            raise CommandError(responses.NO_SUCH_MESSAGE)
        self._reply(responses.deleted(number))

    def _noop(self, arg: str) -> None:
        no_argument(arg)
        self._reply(responses.OK)

    def _rset(self, arg: str) -> None:
        no_argument(arg)
        drop = self._maildrop()
        drop.reset()
        self._reply(responses.maildrop_reset(*drop.live))

    def _message(self, number: int) -> MessageInfo:
        """A message that exists and is not marked deleted, or -ERR."""
        message = self._maildrop().message(number)
        if message is None:
            raise CommandError(responses.NO_SUCH_MESSAGE)
        return message

    # Connection bookkeeping.

    def _maildrop(self) -> DropView:
        if self._drop is None:
            raise ProtocolUsageError("no maildrop: the session is not logged in")
        return self._drop

    def _close(self, reason: CloseReason) -> None:
        self._state = State.CLOSED
        self._close_reason = reason
        self._awaiting = Awaiting.NOTHING
        self._sasl_pending = False
        self._buffer.clear()
        self._emit(self._closed_event())

    def _closed_event(self) -> ConnectionClosed:
        """The event ending the connection; next_event() repeats it after."""
        authenticated = self._drop is not None
        stats = self._tally.into(self._stats)
        return ConnectionClosed(self._close_reason, authenticated, stats)

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _reply(self, response: Response) -> None:
        self._outgoing += response.to_bytes()

    def _send(self, data: bytes) -> None:
        self._outgoing += data
