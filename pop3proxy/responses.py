"""Every response the POP3 core sends, with its RFC 2449/3206 code where one applies."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# RFC 2449 section 8 (grammar in section 3): "[" resp-level *("/" resp-level) "]".
_LEVEL = r"[\x21-\x2e\x30-\x5c\x5e-\x7f]+"
_CODE = re.compile(rf"{_LEVEL}(?:/{_LEVEL})*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# RFC 2449 section 4: a response's first line, CRLF included, is at most 512 octets.
_MAX_LINE = 512
# RFC 5034 section 4: a server challenge is "+" and a space, then Base64 (none
# for PLAIN). It is neither +OK nor -ERR, so it lives outside `Response`.
CONTINUATION = b"+ \r\n"


@dataclass(frozen=True)
class Response:
    """One status line: +OK or -ERR, an optional response code, and human text.

    `code` is the text between the brackets, "SYS/TEMP" for "[SYS/TEMP]";
    empty means no code.
    """

    ok: bool
    text: str
    code: str = ""

    def __post_init__(self) -> None:
        if self.code and not _CODE.fullmatch(self.code):
            raise ValueError(f"malformed response code: {self.code!r}")
        if _CONTROL.search(self.text):
            raise ValueError("response text must not hold control characters")
        if len(self.to_bytes()) > _MAX_LINE:
            raise ValueError("response line over 512 octets")

    def to_bytes(self) -> bytes:
        """Format the status line for the wire, CRLF included."""
        words = ["+OK" if self.ok else "-ERR"]
        if self.code:
            words.append(f"[{self.code}]")
        if self.text:
            words.append(self.text)
        return (" ".join(words) + "\r\n").encode("utf-8")


def multiline(head: Response, lines: Iterable[str]) -> bytes:
    """A status line, then `lines` dot-stuffed, then "." (RFC 1939 section 3)."""
    body = [*lines, "."]
    text = "\r\n".join(body)
    if text.startswith(".") or "\n." in text[:-1]:
        # Rare (a listing's lines start with digits): stuff line by line.
        text = "\r\n".join(
            [f".{line}" if line.startswith(".") else line for line in body[:-1]] + ["."]
        )
    return head.to_bytes() + (text + "\r\n").encode()


def _ok(text: str) -> Response:
    return Response(True, text)


def _err(text: str, code: str = "") -> Response:
    return Response(False, text, code)


def greeting(hostname: str) -> Response:
    """The +OK banner sent when a client connects (RFC 1939 section 4)."""
    return _ok(f"{hostname} POP3 server ready")


def closing(hostname: str) -> Response:
    """The reply to QUIT, in AUTHORIZATION or after a successful UPDATE."""
    return _ok(f"{hostname} POP3 server signing off")


def logged_in(count: int, octets: int) -> Response:
    """The reply to a successful PASS or AUTH: the maildrop is locked and ready."""
    return _ok(f"Logged in, {count} messages ({octets} octets)")


def drop_listing(count: int, octets: int) -> Response:
    """The reply to STAT (RFC 1939 section 5): nothing may follow the size."""
    return _ok(f"{count} {octets}")


def scan_listing(count: int, octets: int) -> Response:
    """The first line of LIST without an argument."""
    return _ok(f"{count} messages ({octets} octets)")


def one_listing(number: int, value: int | str) -> Response:
    """LIST n or UIDL n: the message number, a space, the size or unique-id."""
    return _ok(f"{number} {value}")


def message_follows(octets: int) -> Response:
    """The first line of RETR."""
    return _ok(f"{octets} octets")


def message_follows_line(octets: int) -> bytes:
    """message_follows(octets) on the wire, formatted at once: sent per RETR."""
    if octets < 0:
        raise ValueError("message size must not be negative")
    return b"+OK %d octets\r\n" % octets


def deleted(number: int) -> Response:
    """The reply to DELE."""
    return _ok(f"Message {number} deleted")


def maildrop_reset(count: int, octets: int) -> Response:
    """The reply to RSET: every mark is undone."""
    return _ok(f"Maildrop has {count} messages ({octets} octets)")


# Success.
OK = _ok("")
CAPABILITIES = _ok("Capability list follows")
MECHANISMS = _ok("")
UIDL_FOLLOWS = _ok("Unique-id listing follows")
TOP_FOLLOWS = _ok("Top of message follows")
SEND_PASS = _ok("Send PASS")
BEGIN_TLS = _ok("Begin TLS negotiation now")

# Failed logins, for the application's answer_auth() (RFC 3206 section 4, RFC
# 2449 section 8.1). [AUTH] blames the credentials: the client asks the user
# again. [SYS/TEMP] and [SYS/PERM] blame us: the client keeps them.
AUTH_FAILED = _err("Authentication failed", "AUTH")
AUTH_UNAVAILABLE = _err("Authentication temporarily unavailable", "SYS/TEMP")
MAILDROP_IN_USE = _err("Maildrop is in use by another session", "IN-USE")
LOGIN_TOO_SOON = _err("Logged in too recently, try again later", "LOGIN-DELAY")
MAILBOX_DISABLED = _err("Mailbox unavailable", "SYS/PERM")
# Our own faults (RFC 3206 section 4: SYS/TEMP, the client may retry later).
INTERNAL_ERROR = _err("Internal error, try again later", "SYS/TEMP")
MESSAGE_UNAVAILABLE = _err("Message unavailable, try again later", "SYS/TEMP")
SHUTTING_DOWN = _err("Server shutting down, try again later", "SYS/TEMP")
# RFC 1939 section 6: QUIT whose deletions did not all happen.
NOT_ALL_REMOVED = _err("Some deleted messages not removed", "SYS/TEMP")

# Cleartext passwords refused (RFC 2595 section 2.3); [AUTH] as Dovecot does,
# so that clients show the text to the user instead of retrying.
USE_STLS = _err("Plaintext authentication disallowed, use STLS first", "AUTH")
PLAINTEXT_DISALLOWED = _err(
    "Plaintext authentication disallowed on this connection", "AUTH"
)

# Command errors.
UNKNOWN_COMMAND = _err("Unknown command")
BAD_CHARACTERS = _err("Invalid characters in command")
LINE_TOO_LONG = _err("Line too long")
SYNTAX_ERROR = _err("Syntax error")
USER_SYNTAX = _err("Syntax: USER name")
PASS_SYNTAX = _err("Syntax: PASS password")
AUTH_SYNTAX = _err("Syntax: AUTH [mechanism [initial-response]]")
TOP_SYNTAX = _err("Syntax: TOP message lines")
BAD_MESSAGE_NUMBER = _err("Invalid message number")
NO_SUCH_MESSAGE = _err("No such message")
UNSUPPORTED_MECHANISM = _err("Unsupported authentication mechanism")
AUTH_CANCELLED = _err("Authentication cancelled")
BAD_BASE64 = _err("Invalid base64 data")
BAD_PLAIN = _err("Malformed PLAIN response")

# Commands out of place (RFC 1939 section 3: a wrong state gets -ERR).
NOT_LOGGED_IN = _err("Log in first")
ALREADY_LOGGED_IN = _err("Already logged in")
NEED_USER = _err("Send USER first")
TLS_ACTIVE = _err("TLS is already active")
TLS_UNAVAILABLE = _err("TLS is not available")
