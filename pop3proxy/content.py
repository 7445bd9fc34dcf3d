"""Message octets to a POP3 multi-line response, chunk by chunk (RETR and TOP).

Stored messages end their lines with LF or CRLF; on the wire every line
ends with CRLF, a line starting with "." gets one more (RFC 1939 section 3),
and "." CRLF ends the response. The encoder works on whole chunks with
bytes.replace and bytes.find, never line by line, and holds back at most
one CR between chunks, so memory stays at one chunk whatever the size.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import overload

_CRLF = b"\r\n"
_TERMINATOR = b".\r\n"
# A line that starts with a dot, found by the regex engine: its scan for the
# first byte of a literal is about twice as fast as bytes.replace's search for
# a three-byte needle, which is most of what encoding a large message costs.
_DOT_LINE = re.compile(rb"\r\n\.")
_DOT_STUFFED = b"\r\n.."


def wire_size(chunks: Iterable[bytes]) -> int:
    """The size LIST and STAT report for a message (RFC 1939 section 11).

    Each bare LF counts as CRLF; dot-stuffing is not counted, since the
    client removes it. A lone CR is content and counts as one octet.
    """
    size = 0
    after_cr = False
    for chunk in chunks:
        if not chunk:
            continue
        bare_lf = chunk.count(b"\n") - chunk.count(_CRLF)
        if after_cr and chunk.startswith(b"\n"):
            bare_lf -= 1
        size += len(chunk) + bare_lf
        after_cr = chunk.endswith(b"\r")
    return size


@overload
def _to_crlf(data: bytes) -> bytes: ...


@overload
def _to_crlf(data: bytearray) -> bytearray: ...


def _to_crlf(data: bytes | bytearray) -> bytes | bytearray:
    """Turn bare LF into CRLF; counting first, since most stores use one style.

    A whole small message comes in the bytearray it was read into (no copy);
    chunks of a large one come as bytes.
    """
    if b"\r" not in data:
        # LF line ends only, as Maildir stores them: one pass.
        return data.replace(b"\n", _CRLF)
    line_feeds = data.count(b"\n")
    if line_feeds == 0 or line_feeds == data.count(_CRLF):
        return data
    return data.replace(_CRLF, b"\n").replace(b"\n", _CRLF)


class ContentEncoder:
    """Encode one message for RETR, or its top for TOP with `body_lines` set.

    TOP sends the headers, the blank line and `body_lines` lines of the body
    (RFC 1939 section 7), or the whole message if the body is shorter.
    `octets` counts content sent before stuffing, comparable with the size.
    """

    def __init__(self, body_lines: int | None = None) -> None:
        """Start at the first line of the message."""
        self.octets = 0
        self.done = False
        self._held_cr = False
        self._line_start = True
        self._in_headers = body_lines is not None
        self._lines_left = body_lines

    def encode(self, chunk: bytes) -> bytes:
        """Wire octets for the next chunk of the stored message."""
        if self.done:
            return b""
        text = self._normalise(chunk)
        if self._lines_left is not None:
            text = self._cut(text)
        return self._stuff(text)

    def encode_whole(self, message: bytes | bytearray) -> bytes:
        """encode(message) + finish(): the wire octets of a message read at once."""
        if self._lines_left is not None or message.endswith(b"\r") or self.octets:
            # TOP, a CR that finish() must see held back, or chunks before.
            return self.encode(bytes(message)) + self.finish()
        text = _to_crlf(message)
        self.octets = len(text)
        self.done = True
        wire = _DOT_LINE.sub(_DOT_STUFFED, text)
        if text.startswith(b"."):
            wire = b"." + wire
        if text and not text.endswith(_CRLF):
            return wire + _CRLF + _TERMINATOR
        return wire + _TERMINATOR

    def finish(self) -> bytes:
        """The last wire octets: a held CR, a missing line end, the terminator."""
        tail = b""
        if self._held_cr and not self.done:
            tail = self._stuff(b"\r")
        self._held_cr = False
        self.done = True
        return tail + (_TERMINATOR if self._line_start else _CRLF + _TERMINATOR)

    def _normalise(self, chunk: bytes) -> bytes:
        """CRLF line ends; a CR ending the chunk waits to see if LF follows."""
        if self._held_cr:
            chunk = b"\r" + chunk
        self._held_cr = chunk.endswith(b"\r")
        if self._held_cr:
            chunk = chunk[:-1]
        return _to_crlf(chunk)

    def _cut(self, text: bytes) -> bytes:
        """For TOP: keep what comes before the end of the wanted lines."""
        start = 0
        if self._in_headers:
            start = self._header_end(text)
            if start == -1:
                return text
            self._in_headers = False
        stop = self._line_end(text, start)
        if stop == -1:
            return text
        self.done = True
        return text[:stop]

    def _header_end(self, text: bytes) -> int:
        """Where the body starts, just past the empty line; -1 if not here.

        Chunks never end inside CRLF, so an empty line split across two
        chunks always starts this one at the start of a line.
        """
        if self._line_start and text.startswith(_CRLF):
            return 2
        end = text.find(b"\r\n\r\n")
        return -1 if end == -1 else end + 4

    def _line_end(self, text: bytes, start: int) -> int:
        """Just past the last wanted body line, or -1 (and count) if not here."""
        wanted = self._lines_left or 0
        available = text.count(_CRLF, start)
        if available < wanted:
            self._lines_left = wanted - available
            return -1
        stop = start
        for _ in range(wanted):
            stop = text.index(_CRLF, stop) + 2
        return stop

    def _stuff(self, text: bytes) -> bytes:
        """Double a "." that starts a line (RFC 1939 section 3)."""
        if not text:
            return text
        self.octets += len(text)
        wire = _DOT_LINE.sub(_DOT_STUFFED, text)
        if self._line_start and text.startswith(b"."):
            wire = b"." + wire
        self._line_start = text.endswith(_CRLF)
        return wire
