"""Parsing of POP3 command lines and SASL PLAIN responses; errors carry their reply."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

from pop3proxy import responses
from pop3proxy.responses import Response

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Message numbers and line counts: plain decimal; ten digits is plenty and
# keeps int() away from megabytes of digits.
_NUMBER = re.compile(r"[0-9]{1,10}")
# RFC 4616 section 2: authzid, authcid and passwd are at most 255 octets.
_PLAIN_FIELD = 255


class CommandError(Exception):
    """A command the core refuses; `response` is what the client gets."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.text)
        self.response = response


@dataclass(frozen=True)
class Command:
    """A command line split into its upper-cased keyword and the text after it.

    `arg` is everything after the first space, unstripped: PASS takes it
    whole (RFC 1939 section 7: spaces may be part of the password).
    """

    verb: str
    arg: str = field(repr=False)


@dataclass(frozen=True)
class PlainCredentials:
    """The three fields of a SASL PLAIN message (RFC 4616 section 2)."""

    authzid: str
    authcid: str
    password: str = field(repr=False)


def parse_command(line: bytes) -> Command:
    """Split a command line (without its CRLF) into keyword and argument.

    Keywords are case-insensitive (RFC 1939 section 3). Lines must be UTF-8
    without control characters, so nothing the client sends can end one of
    our response lines early.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError(responses.BAD_CHARACTERS) from None
    if _CONTROL.search(text):
        raise CommandError(responses.BAD_CHARACTERS)
    verb, _, arg = text.partition(" ")
    return Command(verb.upper(), arg)


def words(arg: str) -> list[str]:
    """The space-separated arguments of a command."""
    return arg.split()


def no_argument(arg: str) -> None:
    """Refuse arguments to a command that takes none."""
    if words(arg):
        raise CommandError(responses.SYNTAX_ERROR)


def parse_number(text: str) -> int:
    """A message number: decimal digits (RFC 1939 section 3)."""
    if not _NUMBER.fullmatch(text):
        raise CommandError(responses.BAD_MESSAGE_NUMBER)
    return int(text)


def optional_number(arg: str) -> int | None:
    """The one optional message number of LIST and UIDL."""
    given = words(arg)
    if len(given) > 1:
        raise CommandError(responses.SYNTAX_ERROR)
    return parse_number(given[0]) if given else None


def one_number(arg: str) -> int:
    """The one message number of RETR and DELE."""
    given = words(arg)
    if len(given) != 1:
        raise CommandError(responses.SYNTAX_ERROR)
    return parse_number(given[0])


def parse_top(arg: str) -> tuple[int, int]:
    """TOP msg n: a message number and a non-negative count of body lines."""
    given = words(arg)
    if len(given) != 2 or not _NUMBER.fullmatch(given[1]):
        raise CommandError(responses.TOP_SYNTAX)
    return parse_number(given[0]), int(given[1])


def decode_plain(text: str) -> PlainCredentials:
    """Decode a Base64 PLAIN response: [authzid] NUL authcid NUL passwd.

    RFC 5034 section 4: "=" is an empty initial response, and what does not
    decode as Base64 fails the AUTH command. The decoder is strict: no
    characters outside the alphabet, padding only at the end.
    """
    try:
        raw = b"" if text == "=" else base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise CommandError(responses.BAD_BASE64) from None
    fields = raw.split(b"\x00")
    if len(fields) != 3 or not (fields[1] and fields[2]):
        raise CommandError(responses.BAD_PLAIN)
    if any(len(value) > _PLAIN_FIELD for value in fields):
        raise CommandError(responses.BAD_PLAIN)
    try:
        authzid, authcid, password = (value.decode("utf-8") for value in fields)
    except UnicodeDecodeError:
        raise CommandError(responses.BAD_PLAIN) from None
    # Names end up in log lines: no control characters there.
    if _CONTROL.search(authzid + authcid):
        raise CommandError(responses.BAD_PLAIN)
    return PlainCredentials(authzid, authcid, password)
