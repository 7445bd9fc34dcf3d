"""DATA and BDAT body decoding: every split point, a reference decoder, flat memory."""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable

import pytest

from lmtpd import replies
from lmtpd.body import (
    BodyCheck,
    BodyDefect,
    ChunkDecoder,
    DataDecoder,
    normalise_line_ends,
)
from lmtpd.events import BodyChunk, BodyStart, MessageComplete, NeedData, RcptTo
from lmtpd.protocol import Limits, LMTPConnection

END = b"\r\n.\r\n"


def reference_decode(wire: bytes) -> tuple[bytes, int]:
    """Line by line, the slow obvious way: (content, octets up to the end mark).

    Lines end at CRLF only; a lone "." ends; a leading dot is dropped; bare
    CR and LF inside a line become CRLF.
    """
    out = bytearray()
    pos = 0
    while True:
        end = wire.index(b"\r\n", pos)
        line = wire[pos:end]
        pos = end + 2
        if line == b".":
            return bytes(out), pos
        if line.startswith(b"."):
            line = line[1:]
        line = (
            line.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        )
        out += line + b"\r\n"


def decode_in_parts(parts: Iterable[bytes]) -> tuple[bytes, int, bytes]:
    """Feed parts to a DataDecoder as a connection would: (content, used, rest)."""
    decoder = DataDecoder()
    buffer = bytearray()
    content = bytearray()
    used = 0
    for part in parts:
        buffer += part
        while not decoder.finished:
            chunk, taken = decoder.decode(buffer, keep=True)
            assert not chunk.endswith(b"\r")
            content += chunk
            used += taken
            del buffer[:taken]
            if not taken:
                break
            # Only the tail that may still become CRLF "." CRLF stays behind.
        assert decoder.finished or len(buffer) <= 3
    return bytes(content), used, bytes(buffer)


TRICKY = (
    b"Subject: dots\r\n\r\n..\r\n...\r\n.x\r\n..x\r\nx.\r\n\r\n"
    b"a\n.\nb\r\n.\rc\r\n\r.\r\n.\n.\r\n" + END[2:] + b"NOOP\r\n"
)


def test_tricky_message_matches_reference() -> None:
    """The tricky message decodes as the line-by-line reference says."""
    content, used, rest = decode_in_parts([TRICKY])
    assert (content, used) == reference_decode(TRICKY)
    assert rest == b"NOOP\r\n"


def test_every_single_split_point() -> None:
    """Cutting the input in two anywhere gives the same body and end."""
    expected = reference_decode(TRICKY)
    for cut in range(len(TRICKY) + 1):
        content, used, _ = decode_in_parts([TRICKY[:cut], TRICKY[cut:]])
        assert (content, used) == expected, cut


def test_every_pair_of_split_points() -> None:
    """Cutting the input in three anywhere gives the same body and end."""
    wire = b"a\r\n..b\r\n.\rc\n.\n\r\n.\r\n"
    expected = reference_decode(wire)
    for first in range(len(wire) + 1):
        for second in range(first, len(wire) + 1):
            parts = [wire[:first], wire[first:second], wire[second:]]
            content, used, _ = decode_in_parts(parts)
            assert (content, used) == expected, (first, second)


def test_byte_by_byte() -> None:
    """One octet at a time gives the same body and end."""
    content, used, rest = decode_in_parts(
        [TRICKY[i : i + 1] for i in range(len(TRICKY))]
    )
    assert (content, used) == reference_decode(TRICKY)
    assert rest == b"NOOP\r\n"


def random_lines(rng: random.Random) -> list[bytes]:
    """Random message lines made of awkward pieces, none holding CRLF."""
    pieces = [b"a", b"bc", b".", b"..", b"\r", b"\n", b" ", b"\x80", b"\r\r"]
    lines = []
    for _ in range(rng.randrange(0, 12)):
        line = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 6)))
        while b"\r\n" in line:
            line = line.replace(b"\r\n", b"\n")
        lines.append(line)
    return lines


def stuffed(lines: list[bytes]) -> bytes:
    """The lines as a client sends them (RFC 5321 section 4.5.2), end mark added."""
    wire = b"".join(
        (b"." + line if line[:1] == b"." else line) + b"\r\n" for line in lines
    )
    return wire + b".\r\n"


@pytest.mark.parametrize("seed", range(200))
def test_random_messages_random_splits(seed: int) -> None:
    """Random messages cut at random points decode as the reference says."""
    rng = random.Random(seed)
    lines = random_lines(rng)
    wire = stuffed(lines) + b"QUIT\r\n"
    cuts = sorted(rng.sample(range(len(wire) + 1), rng.randrange(0, 8)))
    parts = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    content, used, rest = decode_in_parts(parts)
    assert (content, used) == reference_decode(wire)
    assert content == b"".join(normalise_line_ends(line) + b"\r\n" for line in lines)
    assert rest == b"QUIT\r\n"


@pytest.mark.parametrize(
    "wire",
    [b"x\n.\n", b"x\r\n.\n", b"x\n.\r\n", b"x\r.\r\n", b"x\r\n.\r", b"x\r\n. \r\n"],
)
def test_no_false_end(wire: bytes) -> None:
    """Only CRLF "." CRLF ends DATA (RFC 5321 section 4.1.1.4, SMTP smuggling)."""
    decoder = DataDecoder()
    buffer = bytearray(wire)
    decoder.decode(buffer, keep=True)
    assert not decoder.finished


def test_keep_false_still_finds_the_end() -> None:
    """A discarded body is still read up to its end, and nothing comes out."""
    decoder = DataDecoder()
    buffer = bytearray(b"..a\r\nb\r\n.\r\nNOOP\r\n")
    content, used = decoder.decode(buffer, keep=False)
    assert (content, used, decoder.finished) == (b"", 11, True)


@pytest.mark.parametrize(
    ("feed", "defect"),
    [
        ([b"x" * 998 + b"\r\n"], None),
        ([b"x" * 999 + b"\r\n"], BodyDefect.LINE_TOO_LONG),
        ([b"x" * 500, b"x" * 498, b"\r\n"], None),
        ([b"x" * 500, b"x" * 499], BodyDefect.LINE_TOO_LONG),
        ([b"a\r\n" + b"x" * 998 + b"\r\nb\r\n"], None),
        ([b"a\r\n" + b"x" * 999 + b"\r\nb\r\n"], BodyDefect.LINE_TOO_LONG),
        ([b"a\r\n" + b"x" * 300, b"x" * 698 + b"\r\nb"], None),
        ([b"a\r\n" + b"x" * 300, b"x" * 699 + b"\r\nb"], BodyDefect.LINE_TOO_LONG),
        ([b"a\x00b\r\n"], BodyDefect.NUL_BYTE),
    ],
)
def test_body_check(feed: list[bytes], defect: BodyDefect | None) -> None:
    """Lines of 1000 octets with CRLF pass, 1001 fail, however the data arrives."""
    check = BodyCheck(max_size=0, max_line=1000, text=True)
    for data in feed:
        check.feed(data)
    assert check.defect is defect
    assert check.size == sum(map(len, feed))


def test_body_check_binary() -> None:
    """BINARYMIME bodies have no lines and may hold NUL; size still counts."""
    check = BodyCheck(max_size=10, max_line=1000, text=False)
    check.feed(b"\x00" * 10 + b"x" * 0)
    assert check.defect is None
    check.feed(b"\x00")
    assert check.defect is BodyDefect.TOO_BIG


def test_chunk_decoder_holds_a_final_cr() -> None:
    """A chunk ending in CR keeps it for the next chunk, or for flush()."""
    decoder = ChunkDecoder()
    decoder.start(3)
    buffer = bytearray(b"ab\rMORE")
    assert decoder.decode(buffer, keep=True) == (b"ab", 3)
    assert decoder.remaining == 0
    assert decoder.flush() == b"\r"
    assert decoder.flush() == b""


def block_of_lines(size: int) -> bytes:
    """Wire text of about `size` octets: varied lines, some dot-stuffed."""
    rng = random.Random(7)
    lines = []
    total = 0
    while total < size:
        line = b"x" * rng.randrange(0, 120)
        if rng.random() < 0.05:
            line = b".." + line
        lines.append(line + b"\r\n")
        total += len(line) + 2
    return b"".join(lines)


def test_fifty_megabytes_in_bounded_memory() -> None:
    """50 MB of DATA in 64 KiB receive calls: the core never holds more than one."""
    receive_size = 64 * 1024
    block = block_of_lines(1024 * 1024)
    copies = 50
    wire = block * copies + b".\r\nQUIT\r\n"
    expected = hashlib.sha256()
    decoded_block, _ = reference_decode(block + b".\r\n")
    for _ in range(copies):
        expected.update(decoded_block)

    conn = LMTPConnection("mx.example", Limits(max_message_size=0))
    conn.receive_data(b"LHLO a\r\nMAIL FROM:<s@x>\r\nRCPT TO:<r@x>\r\nDATA\r\n")
    received = hashlib.sha256()
    offset = 0
    largest_buffer = largest_chunk = 0
    while True:
        event = conn.next_event()
        largest_buffer = max(largest_buffer, conn.pending_input)
        if isinstance(event, NeedData):
            conn.receive_data(wire[offset : offset + receive_size])
            offset += receive_size
        elif isinstance(event, RcptTo):
            conn.answer_rcpt(replies.RCPT_OK)
        elif isinstance(event, BodyStart):
            conn.answer_body_start(None)
        elif isinstance(event, BodyChunk):
            received.update(event.data)
            largest_chunk = max(largest_chunk, len(event.data))
        elif isinstance(event, MessageComplete):
            conn.answer_message([replies.DELIVERED])
            break

    assert received.hexdigest() == expected.hexdigest()
    assert largest_buffer <= receive_size
    assert largest_chunk <= receive_size
    assert conn.data_to_send().endswith(b"250 2.0.0 <r@x> Saved\r\n")


def test_normalise_line_ends_agrees_with_a_plain_rewrite() -> None:
    """Short texts of CR, LF, dot and a letter: the same as rewriting every line end."""
    every_line_end = re.compile(rb"\r\n|\r|\n")
    rng = random.Random(5)
    for _ in range(5000):
        text = bytes(rng.choice(b"a\r\n.") for _ in range(rng.randint(0, 12)))
        assert normalise_line_ends(text) == every_line_end.sub(b"\r\n", text), text
