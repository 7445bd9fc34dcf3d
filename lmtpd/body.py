"""Message body decoding for DATA and BDAT, in bulk over whole receive buffers.

Neither decoder walks the body line by line: DATA looks only for CRLF "."
(a line that may be stuffed or may end the message) with a regex search, and
BDAT counts octets. Each decode() call consumes what the buffer allows and
returns the content found, so memory stays within one receive buffer
whatever the message size.
"""

from __future__ import annotations

import re
from enum import Enum

# RFC 5321 section 4.1.1.4: only CRLF "." CRLF ends the mail data; "\n.\n"
# and other bare-LF forms must not (they enable SMTP smuggling).
_END_LINE = b".\r\n"
# Found by the regex engine, whose scan for a literal's first octet runs about
# twice as fast as bytes.find for a three-octet needle in mail text.
_DOT_LINE = re.compile(rb"\r\n\.")
_LINE_END = re.compile(rb"\r\n|\r|\n")


class BodyDefect(Enum):
    """Why a received body is refused once it has ended."""

    TOO_BIG = "too big"
    LINE_TOO_LONG = "line too long"
    NUL_BYTE = "NUL byte"


def normalise_line_ends(data: bytes) -> bytes:
    """Turn bare CR and bare LF into CRLF (RFC 5321 section 2.3.8).

    Checking is cheaper than rewriting, and almost every body is clean. The
    text is clean exactly when putting a CR back before every LF of the text
    without its CRs gives the text again: two single-octet replaces (memchr
    passes) and a compare, where counting CRLF pairs takes several times longer.
    """
    if data.replace(b"\r", b"").replace(b"\n", b"\r\n") == data:
        return data
    return _LINE_END.sub(b"\r\n", data)


class DataDecoder:
    """Undo DATA transparency (RFC 5321 section 4.5.2) across any buffer split.

    A line is a line only after CRLF: a dot after a bare LF is content, so
    "\\n.\\r\\n" never ends the message. At most three octets (CR LF or a
    dot and CR waiting for what follows) stay unconsumed in the buffer.
    """

    def __init__(self) -> None:
        self.finished = False
        self._line_start = True

    def decode(self, buffer: bytearray, keep: bool) -> tuple[bytes, int]:
        """Return (content, octets consumed); content is empty unless `keep`."""
        pieces: list[bytearray] = []
        pos = 0
        while not self.finished:
            if self._line_start:
                pos = self._line_head(buffer, pos)
                if self.finished or self._line_start:
                    break
            found = _DOT_LINE.search(buffer, pos)
            mark = -1 if found is None else found.start()
            end = _safe_end(buffer, pos) if mark == -1 else mark + 2
            if keep:
                pieces.append(buffer[pos:end])
            self._line_start = buffer.endswith(b"\r\n", pos, end)
            pos = end
            if mark == -1:
                break
        return (normalise_line_ends(b"".join(pieces)) if pieces else b""), pos

    def _line_head(self, buffer: bytearray, pos: int) -> int:
        """Look at the start of a line: end marker, stuffed dot, or plain text."""
        head = bytes(buffer[pos : pos + 3])
        if head == _END_LINE:
            self.finished = True
            self._line_start = False
            return pos + 3
        if _END_LINE.startswith(head):
            # Empty, "." or ".\r": what follows decides.
            return pos
        self._line_start = False
        # RFC 5321 section 4.5.2: a leading dot on any other line is removed.
        return pos + 1 if head[:1] == b"." else pos


def _safe_end(buffer: bytearray, pos: int) -> int:
    """End of what can be passed on now: hold back a final CR awaiting its LF."""
    end = len(buffer)
    if end > pos and buffer[end - 1] == 0x0D:
        return end - 1
    return end


class ChunkDecoder:
    """Take BDAT chunk octets verbatim (RFC 3030 section 2), chunk after chunk.

    A final CR is held until the next octet, so that no BodyChunk ends
    between CR and LF; flush() returns it when the last chunk is done.
    """

    def __init__(self) -> None:
        self.remaining = 0
        self._held = b""

    def start(self, size: int) -> None:
        """Begin a chunk of `size` octets."""
        self.remaining = size

    def decode(self, buffer: bytearray, keep: bool) -> tuple[bytes, int]:
        """Return (content, octets consumed) of the current chunk."""
        take = min(self.remaining, len(buffer))
        self.remaining -= take
        if not keep:
            self._held = b""
            return b"", take
        content = self._held + bytes(buffer[:take])
        self._held = b""
        if content.endswith(b"\r"):
            content, self._held = content[:-1], b"\r"
        return content, take

    def flush(self) -> bytes:
        """Return the octet held back at the end of the last chunk, if any."""
        held, self._held = self._held, b""
        return held


class BodyCheck:
    """Running limits over the decoded body: total size, line length, NUL.

    A limit of 0 means unlimited. The line limit counts CRLF, not the dot
    added for transparency (RFC 5321 section 4.5.3.1.6). `text` is False for
    BODY=BINARYMIME, where lines and NUL octets have no meaning.
    """

    def __init__(self, max_size: int, max_line: int, text: bool) -> None:
        self.size = 0
        self.defect: BodyDefect | None = None
        self._max_size = max_size
        self._max_line = max_line if text else 0
        self._text = text
        self._line_length = 0

    def feed(self, data: bytes) -> None:
        """Account for `data` and remember the first defect found."""
        self.size += len(data)
        if self.defect is not None:
            return
        if self._max_size and self.size > self._max_size:
            self.defect = BodyDefect.TOO_BIG
        elif self._text and b"\x00" in data:
            # RFC 2045 sections 2.7 and 2.8: neither 7bit nor 8bit text may
            # hold NUL, and mailbox readers (POP3, IMAP per RFC 3501 section
            # 4.3) cannot pass it on. Refusing lets the sender bounce it
            # rather than us storing a message clients choke on.
            self.defect = BodyDefect.NUL_BYTE
        elif self._max_line and self._has_long_line(data):
            self.defect = BodyDefect.LINE_TOO_LONG

    def _has_long_line(self, data: bytes) -> bool:
        """True if a line (counted with its CRLF) exceeds the limit."""
        first = data.find(b"\n")
        if first == -1:
            self._line_length += len(data)
            return self._line_length + 2 > self._max_line
        if self._line_length + first + 1 > self._max_line:
            return True
        last = data.rfind(b"\n")
        middle = data[first + 1 : last + 1]
        if len(middle) > self._max_line and (
            _longest_line(middle, self._max_line) > self._max_line
        ):
            return True
        self._line_length = len(data) - last - 1
        return self._line_length + 2 > self._max_line


def _longest_line(lines: bytes, limit: int) -> int:
    """Length of the longest LF-terminated line in `lines`, LF included.

    Looks only where a line over `limit` could be: such a line covers at least one
    whole window of limit // 2 octets with no LF in it, so one find() per window
    skips every ordinary line, instead of splitting the text into lines.
    """
    window = max(limit // 2, 1)
    longest = 0
    for start in range(0, len(lines), window):
        if lines.find(b"\n", start, start + window) == -1:
            line_start = lines.rfind(b"\n", 0, start) + 1
            line_end = lines.find(b"\n", start)
            line_end = len(lines) if line_end == -1 else line_end
            longest = max(longest, line_end - line_start + 1)
    return longest
