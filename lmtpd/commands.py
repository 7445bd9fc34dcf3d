"""Parsing of LMTP command lines; every error raises CommandError with its reply."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from lmtpd import replies
from lmtpd.envelope import BodyType, XForward
from lmtpd.replies import Reply

# RFC 5321 section 4.1.2: esmtp-keyword and esmtp-value.
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_VALUE = re.compile(r"[^=\s\x00-\x1f\x7f]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# RFC 3461 section 4 (xtext, as RFC 1891 defined it): "+" and two hex digits.
_XTEXT_ESCAPE = re.compile(rb"\+([0-9A-Fa-f]{2})")
_XFORWARD_NAMES = frozenset(
    ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")
)
# Postfix XFORWARD_README: these values mean "no information".
_UNAVAILABLE = frozenset(("[UNAVAILABLE]", "[TEMPUNAVAIL]"))


class CommandError(Exception):
    """A command the core refuses; `reply` is what the client gets."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


@dataclass(frozen=True)
class Command:
    """A command line split into its upper-cased verb and its argument text."""

    verb: str
    arg: str


@dataclass(frozen=True)
class PathCommand:
    """The address and ESMTP parameters of MAIL FROM or RCPT TO."""

    address: str
    params: Mapping[str, str | None]


@dataclass(frozen=True)
class MailOptions:
    """What the MAIL parameters SIZE, BODY and SMTPUTF8 asked for."""

    body_type: BodyType
    declared_size: int | None
    smtputf8: bool


def parse_command(line: bytes) -> Command:
    """Split a command line (without its CRLF) into verb and argument.

    Verbs are case-insensitive (RFC 5321 section 2.4). Lines must be UTF-8
    (RFC 6531 section 3.3) and free of control characters, so that nothing
    from the client can end a reply line early.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError(replies.BAD_CHARACTERS) from None
    if _CONTROL.search(text.replace("\t", " ")):
        raise CommandError(replies.BAD_CHARACTERS)
    verb, _, arg = text.rstrip(" \t").partition(" ")
    return Command(verb.upper(), arg.strip(" \t"))


def parse_mail(arg: str) -> PathCommand:
    """Parse "FROM:<address> [params]"; the null sender <> is allowed."""
    return _parse_path(arg, "FROM:", replies.MAIL_SYNTAX, replies.BAD_SENDER_SYNTAX)


def parse_rcpt(arg: str) -> PathCommand:
    """Parse "TO:<address> [params]"; the address must not be empty."""
    path = _parse_path(arg, "TO:", replies.RCPT_SYNTAX, replies.BAD_RECIPIENT_SYNTAX)
    if not path.address:
        raise CommandError(replies.BAD_RECIPIENT_SYNTAX)
    return path


def _parse_path(
    arg: str, keyword: str, syntax: Reply, bad_address: Reply
) -> PathCommand:
    """Parse a keyword, an address in angle brackets and optional parameters.

    A space after the colon is tolerated, as most servers do, although RFC
    5321 section 4.1.1.2 has none.
    """
    if arg[: len(keyword)].upper() != keyword:
        raise CommandError(syntax)
    rest = arg[len(keyword) :].lstrip(" ")
    if not rest.startswith("<"):
        raise CommandError(syntax)
    end = _closing_bracket(rest, bad_address)
    tail = rest[end + 1 :]
    if tail and not tail.startswith(" "):
        raise CommandError(syntax)
    return PathCommand(rest[1:end], parse_params(tail))


def _closing_bracket(text: str, bad_address: Reply) -> int:
    """Index of the ">" closing the path that `text` opens with "<".

    Quoted local parts (RFC 5321 section 4.1.2) may hold ">" and spaces.
    """
    quoted = escaped = False
    for index, char in enumerate(text[1:], start=1):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            return index
        elif char in " <" and not quoted:
            break
    raise CommandError(bad_address)


def parse_params(text: str) -> dict[str, str | None]:
    """Parse ESMTP parameters "KEY[=VALUE] ..." (RFC 5321 section 4.1.2)."""
    params: dict[str, str | None] = {}
    for word in text.split():
        key, equals, value = word.partition("=")
        if not _KEYWORD.fullmatch(key) or (equals and not _VALUE.fullmatch(value)):
            raise CommandError(replies.SYNTAX_ERROR)
        if key.upper() in params:
            raise CommandError(replies.SYNTAX_ERROR)
        params[key.upper()] = value if equals else None
    return params


def mail_options(params: Mapping[str, str | None]) -> MailOptions:
    """Check the MAIL parameters we support; any other one is refused with 555."""
    unknown = set(params) - {"SIZE", "BODY", "SMTPUTF8"}
    if unknown:
        raise CommandError(replies.UNKNOWN_PARAMETER)
    return MailOptions(
        _body_type(params.get("BODY", "7BIT")),
        _declared_size(params),
        _smtputf8(params),
    )


def _body_type(value: str | None) -> BodyType:
    """RFC 6152 section 2 and RFC 3030 section 3: 7BIT, 8BITMIME, BINARYMIME."""
    try:
        return BodyType((value or "").upper())
    except ValueError:
        raise CommandError(replies.SYNTAX_ERROR) from None


def _declared_size(params: Mapping[str, str | None]) -> int | None:
    """RFC 1870 section 6: SIZE=<digits>, the client's estimate of the size."""
    if "SIZE" not in params:
        return None
    value = params["SIZE"] or ""
    if not (value.isascii() and value.isdigit()):
        raise CommandError(replies.SYNTAX_ERROR)
    return int(value)


def _smtputf8(params: Mapping[str, str | None]) -> bool:
    """RFC 6531 section 3.4: SMTPUTF8 takes no value."""
    if "SMTPUTF8" not in params:
        return False
    if params["SMTPUTF8"] is not None:
        raise CommandError(replies.SYNTAX_ERROR)
    return True


def parse_bdat(arg: str) -> tuple[int, bool]:
    """Parse "<size> [LAST]" (RFC 3030 section 2) into (size, last)."""
    words = arg.split()
    if not 1 <= len(words) <= 2 or not (words[0].isascii() and words[0].isdigit()):
        raise CommandError(replies.BDAT_SYNTAX)
    if len(words) == 2 and words[1].upper() != "LAST":
        raise CommandError(replies.BDAT_SYNTAX)
    return int(words[0]), len(words) == 2


def parse_xforward(arg: str, current: XForward) -> XForward:
    """Apply "NAME=value ..." (Postfix XFORWARD_README) to `current`.

    Values are xtext; "[UNAVAILABLE]" clears an attribute.
    """
    words = arg.split()
    if not words:
        raise CommandError(replies.XFORWARD_SYNTAX)
    changes: dict[str, str | None] = {}
    for word in words:
        name, equals, value = word.partition("=")
        if not equals or name.upper() not in _XFORWARD_NAMES:
            raise CommandError(replies.XFORWARD_SYNTAX)
        changes[name.lower()] = None if value in _UNAVAILABLE else _xtext(value)
    return replace(current, **changes)


def _xtext(value: str) -> str:
    """Decode xtext; control characters that come out become "?" for logging."""
    raw = value.encode("utf-8")
    if b"+" in _XTEXT_ESCAPE.sub(b"", raw):
        raise CommandError(replies.XFORWARD_SYNTAX)
    decoded = _XTEXT_ESCAPE.sub(lambda match: bytes.fromhex(match[1].decode()), raw)
    return _CONTROL.sub("?", decoded.decode("utf-8", "replace"))
