"""Maildir++ quota: the maildirsize file, its recalculation and its change lines."""

import os
import re
import threading
import time
from pathlib import Path

import pytest

from mdcore.quota import (
    MAX_FILE_BYTES,
    QuotaLimits,
    Usage,
    read_usage,
    recalculate,
    record_delivery,
    record_removal,
    would_exceed,
)

LIMITS = QuotaLimits(bytes=1000, messages=10)
DAY = 24 * 3600


@pytest.fixture
def maildir(tmp_path: Path) -> Path:
    """An empty Maildir with two Maildir++ folders."""
    root = tmp_path / "Maildir"
    for folder in (root, root / ".Sent", root / ".Trash"):
        for subdir in ("tmp", "new", "cur"):
            (folder / subdir).mkdir(parents=True)
    return root


def put(directory: Path, name: str, content: bytes = b"") -> None:
    """Place a message file."""
    (directory / name).write_bytes(content)


def quota_file(maildir: Path) -> str:
    """The text of maildirsize."""
    return (maildir / "maildirsize").read_text()


def write_quota_file(maildir: Path, text: str, age: float = 0.0) -> None:
    """Write maildirsize by hand, age seconds old."""
    path = maildir / "maildirsize"
    path.write_text(text)
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))


@pytest.mark.parametrize(
    ("limits", "header"),
    [
        (QuotaLimits(1000, 10), "1000S,10C"),
        (QuotaLimits(1000, None), "1000S"),
        (QuotaLimits(None, 10), "10C"),
        (QuotaLimits(None, None), "0S"),
    ],
)
def test_limits_header_round_trip(limits: QuotaLimits, header: str) -> None:
    """Limits are written as Dovecot writes them and read back the same."""
    assert limits.header() == header
    assert QuotaLimits.parse(header) == limits


@pytest.mark.parametrize(
    ("line", "limits"),
    [
        ("0S,0C", QuotaLimits(None, None)),
        ("10C,1000S", QuotaLimits(1000, 10)),
        ("1000S, 10C", QuotaLimits(1000, 10)),
        ("", None),
        ("1000", None),
        ("1000X", None),
        ("-5S", None),
        ("S,C", None),
    ],
)
def test_limits_parse(line: str, limits: QuotaLimits | None) -> None:
    """Zero means unlimited; anything but <n>S and <n>C items is not a limits line."""
    assert QuotaLimits.parse(line) == limits


def test_missing_file_is_built_from_names(maildir: Path) -> None:
    """No maildirsize: S= of names in new/ cur/ and folders, stat without S=."""
    put(maildir / "new", "1.M1P1Q1.h,S=100,W=104")
    put(maildir / "cur", "1.M1P1Q2.h,S=200,W=210:2,S")
    put(maildir / "cur", "1.M1P1Q3.h:2,", b"x" * 50)
    put(maildir / ".Sent" / "cur", "1.M1P1Q4.h,S=300:2,S")
    put(maildir / "tmp", "1.M1P1Q5.h,S=999")

    assert read_usage(maildir, LIMITS) == Usage(650, 4)
    assert quota_file(maildir) == "1000S,10C\n650 4\n"
    assert os.listdir(maildir / "tmp") == ["1.M1P1Q5.h,S=999"]


def test_change_lines_add_up(maildir: Path) -> None:
    """Deliveries and removals append one line each; the usage is their sum."""
    recalculate(maildir, LIMITS)
    record_delivery(maildir, 500, LIMITS)
    record_delivery(maildir, 200, LIMITS)
    record_removal(maildir, 300, 1)

    assert quota_file(maildir) == "1000S,10C\n0 0\n500 1\n200 1\n-300 -1\n"
    assert read_usage(maildir, LIMITS) == Usage(400, 1)


def test_usage_without_limits_keeps_those_in_the_file(maildir: Path) -> None:
    """read_usage with no limits trusts and keeps the header it finds."""
    write_quota_file(maildir, "5000S\n120 2\n")

    assert read_usage(maildir) == Usage(120, 2)
    assert quota_file(maildir) == "5000S\n120 2\n"


def test_first_delivery_builds_the_file_without_counting_twice(maildir: Path) -> None:
    """No file yet: record_delivery recalculates, which sees the new message once."""
    put(maildir / "new", "1.M1P1Q1.h,S=100,W=104")
    record_delivery(maildir, 100, LIMITS)

    assert quota_file(maildir) == "1000S,10C\n100 1\n"


def test_removal_without_a_file_creates_none(maildir: Path) -> None:
    """No file: a removal is not written anywhere, the next read rebuilds."""
    record_removal(maildir, 100, 1)
    assert not (maildir / "maildirsize").exists()


def test_concurrent_appends_lose_and_mix_no_lines(maildir: Path) -> None:
    """Eight threads append 200 lines each: every line whole, the sum exact."""
    recalculate(maildir, LIMITS)
    start = threading.Barrier(8)

    def append_many(worker: int) -> None:
        start.wait()
        for count in range(200):
            record_delivery(maildir, worker * 1000 + count, LIMITS)

    threads = [threading.Thread(target=append_many, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    lines = quota_file(maildir).splitlines()
    assert lines[:2] == ["1000S,10C", "0 0"]
    assert all(re.fullmatch(r"\d+ 1", line) for line in lines[2:])
    expected = sorted(f"{w * 1000 + c} 1" for w in range(8) for c in range(200))
    assert sorted(lines[2:]) == expected


@pytest.mark.parametrize(
    "text",
    [
        "1000S,10C\n500 1\nnot a number\n",
        "1000S,10C\n500 1\n\n",
        "garbage\n500 1\n",
        "1000S,10C\n",
        "",
        "1000S,10C\n500 1\n-900 -2\n",
        "1000S,10C\n5\x000 1\n",
        "1000S,10C\n500 1\xff\n",
    ],
)
def test_broken_file_is_recalculated(maildir: Path, text: str) -> None:
    """Garbage, no change line, empty, negative totals, NUL or non-ASCII: rebuilt."""
    put(maildir / "cur", "1.M1P1Q1.h,S=42:2,S")
    write_quota_file(maildir, text)

    assert read_usage(maildir, LIMITS) == Usage(42, 1)
    assert quota_file(maildir) == "1000S,10C\n42 1\n"


def test_unfinished_last_line_is_left_out(maildir: Path) -> None:
    """A last line without LF is an append in progress: ignored, no rebuild."""
    write_quota_file(maildir, "1000S,10C\n300 3\n12")

    assert read_usage(maildir, LIMITS) == Usage(300, 3)
    assert quota_file(maildir) == "1000S,10C\n300 3\n12"


def test_too_long_file_is_recalculated(maildir: Path) -> None:
    """More than 5120 bytes of change lines: rebuilt into one summary line."""
    text = "1000S,10C\n" + "1 1\n-1 -1\n" * (MAX_FILE_BYTES // 8)
    write_quota_file(maildir, text)

    assert read_usage(maildir, LIMITS) == Usage(0, 0)
    assert quota_file(maildir) == "1000S,10C\n0 0\n"


def test_changed_limits_rewrite_the_header(maildir: Path) -> None:
    """Other limits than the file's: recalculated and written with the new header."""
    put(maildir / "new", "1.M1P1Q1.h,S=70")
    write_quota_file(maildir, "500S\n70 1\n")

    assert read_usage(maildir, LIMITS) == Usage(70, 1)
    assert quota_file(maildir) == "1000S,10C\n70 1\n"


def test_over_quota_is_trusted_only_when_fresh_and_summarised(maildir: Path) -> None:
    """Full per a fresh one-line file: believed; stale or with changes: rebuilt."""
    put(maildir / "new", "1.M1P1Q1.h,S=70")

    write_quota_file(maildir, "1000S,10C\n2000 1\n")
    assert read_usage(maildir, LIMITS) == Usage(2000, 1)

    write_quota_file(maildir, "1000S,10C\n2000 1\n", age=16 * 60)
    assert read_usage(maildir, LIMITS) == Usage(70, 1)

    write_quota_file(maildir, "1000S,10C\n1000 0\n1000 1\n")
    assert read_usage(maildir, LIMITS) == Usage(70, 1)


def test_under_quota_file_is_trusted_however_old(maildir: Path) -> None:
    """Not full: an old file is not rebuilt (Maildir++ only doubts a "full")."""
    write_quota_file(maildir, "1000S,10C\n300 2\n5 1\n", age=DAY)

    assert read_usage(maildir, LIMITS) == Usage(305, 3)


def test_would_exceed_checks_bytes_and_count(maildir: Path) -> None:
    """One more message: over by size or by count, or fits; no limits, no file."""
    write_quota_file(maildir, "1000S,10C\n900 9\n")
    assert not would_exceed(maildir, LIMITS, 100)
    assert would_exceed(maildir, LIMITS, 101)

    write_quota_file(maildir, "1000S,10C\n100 10\n")
    assert would_exceed(maildir, LIMITS, 1)

    (maildir / "maildirsize").unlink()
    assert not would_exceed(maildir, QuotaLimits(), 10**12)
    assert not (maildir / "maildirsize").exists()


def test_would_exceed_rebuilds_a_doubtful_full_file(maildir: Path) -> None:
    """The file says a new message would not fit, but it is stale: rebuilt, fits."""
    put(maildir / "new", "1.M1P1Q1.h,S=70")
    write_quota_file(maildir, "1000S,10C\n950 1\n", age=20 * 60)

    assert not would_exceed(maildir, LIMITS, 100)
    assert quota_file(maildir) == "1000S,10C\n70 1\n"
