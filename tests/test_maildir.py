"""Maildir delivery: staging, links and copies, names, dedupe, cleanup."""

import errno
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mdcore.dedupe import DedupeIndex, dedupe_tag
from mdcore.mailbox_reader import iter_crlf, list_messages, open_message
from mdcore.maildir import (
    DeliveryOutcome,
    DeliveryResult,
    MailboxTarget,
    StagedMessage,
    clean_stale,
    clean_tmp,
    deliver,
    deliver_in_steps,
    ensure_maildir,
    finish_steps,
    placing_reads_disk,
    sanitize_hostname,
    unique_name,
)
from mdcore.quota import QuotaLimits, Usage, read_usage
from mdcore.sharedtags import SharedTags

PREFIX = b"Return-Path: <sender@example.org>\n"
BODY = b"Subject: hello\r\n\r\nline one\r\nline two\r\n"
STORED = PREFIX + b"Subject: hello\n\nline one\nline two\n"
DAY = 24 * 3600

DELIVERED = DeliveryOutcome.DELIVERED
DUPLICATE = DeliveryOutcome.DUPLICATE


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    """The shared staging directory."""
    path = tmp_path / "staging"
    path.mkdir()
    return path


def mailbox(tmp_path: Path, user: str) -> Path:
    """Create the Maildir of one user."""
    return ensure_maildir(tmp_path / "example.org" / user / "Maildir")


def stage(spool: Path, body: bytes = BODY, chunk_size: int = 0) -> StagedMessage:
    """Stage and commit a message, written in chunks of chunk_size (0: at once)."""
    staged = StagedMessage(spool, PREFIX)
    step = chunk_size or max(len(body), 1)
    for start in range(0, len(body), step):
        staged.write(body[start : start + step])
    staged.commit()
    return staged


def target(maildir: Path, key: str | None = None, **fields: Any) -> MailboxTarget:
    """A target for the user whose Maildir this is."""
    recipient = f"{maildir.parent.name}@example.org"
    return MailboxTarget(maildir, recipient, key, **fields)


def names(directory: Path) -> list[str]:
    """The file names in a directory, sorted."""
    return sorted(os.listdir(directory))


def patch_os(
    monkeypatch: pytest.MonkeyPatch, name: str, code: int, when: Callable[..., bool]
) -> None:
    """Make os.<name> raise OSError(code) for the calls when() picks."""
    real = getattr(os, name)

    def replacement(*args: Any, **kwargs: Any) -> Any:
        if when(*args):
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, replacement)


def test_one_target_gets_the_message_in_new(tmp_path: Path, spool: Path) -> None:
    """One recipient: the message lands in new/, with LF line ends, tmp/ stays empty."""
    maildir = mailbox(tmp_path, "alice")
    with stage(spool) as staged:
        results = deliver(staged, [target(maildir)], DedupeIndex())

    [name] = names(maildir / "new")
    assert results == [DeliveryResult(target(maildir), DELIVERED, name)]
    assert (maildir / "new" / name).read_bytes() == STORED
    assert names(maildir / "tmp") == []
    assert names(spool) == []


def test_staging_in_the_targets_tmp_is_plain_maildir_delivery(tmp_path: Path) -> None:
    """Single recipient staged in its own tmp/: tmp/ to new/, nothing left in tmp/."""
    maildir = mailbox(tmp_path, "alice")
    with stage(maildir / "tmp") as staged:
        [result] = deliver(staged, [target(maildir)], DedupeIndex())

    assert result.outcome is DELIVERED
    assert names(maildir / "new") == [result.name]
    assert names(maildir / "tmp") == []


def test_three_targets_share_one_inode(tmp_path: Path, spool: Path) -> None:
    """Three recipients: three hard links to the one staged file, no copies."""
    maildirs = [mailbox(tmp_path, user) for user in ("alice", "bob", "carol")]
    with stage(spool) as staged:
        results = deliver(staged, [target(m) for m in maildirs], DedupeIndex())
        inode = os.stat(staged.path).st_ino
        assert os.stat(staged.path).st_nlink == 4

    assert [r.outcome for r in results] == [DELIVERED] * 3
    for maildir, result in zip(maildirs, results, strict=True):
        assert names(maildir / "new") == [result.name]
        status = os.stat(maildir / "new" / str(result.name))
        assert (status.st_ino, status.st_nlink) == (inode, 3)
    assert len({r.name for r in results}) == 3


@pytest.mark.parametrize(
    ("chunks", "stored"),
    [
        ([b"a\r\nb\r\n"], b"a\nb\n"),
        ([b"a\r", b"\nb\r\n"], b"a\nb\n"),
        ([b"a\r", b"", b"\nb\r\n"], b"a\nb\n"),
        ([b"\r", b"\n", b"\r", b"\n"], b"\n\n"),
        ([b"a\nb\r\n"], b"a\nb\n"),
        ([b"a\rb\r\n"], b"a\rb\n"),
        ([b"a\r", b"\r\n"], b"a\r\n"),
        ([b"a\r\n", b"b\r"], b"a\nb\r"),
        ([b"a\r\n", b"b"], b"a\nb"),
        ([], b""),
    ],
)
def test_crlf_is_stored_as_lf_and_both_sizes_counted(
    tmp_path: Path, spool: Path, chunks: list[bytes], stored: bytes
) -> None:
    """Wire chunks in, LF-only file out; S= is the file size, W= adds one per LF."""
    maildir = mailbox(tmp_path, "alice")
    staged = StagedMessage(spool, PREFIX)
    for chunk in chunks:
        staged.write(chunk)
    staged.commit()
    [result] = deliver(staged, [target(maildir)], DedupeIndex())
    staged.abort()

    content = (maildir / "new" / str(result.name)).read_bytes()
    assert content == PREFIX + stored
    assert (staged.size, staged.vsize) == (
        len(content),
        len(content) + content.count(b"\n"),
    )
    assert str(result.name).endswith(f",S={staged.size},W={staged.vsize}")


@pytest.mark.parametrize("chunk_size", [0, 1, 7, 65536, 65537])
def test_reader_gets_back_exactly_what_was_written(
    tmp_path: Path, spool: Path, chunk_size: int
) -> None:
    """Long body in odd chunks: the reader, CRLF re-added, returns it byte for byte."""
    maildir = mailbox(tmp_path, "alice")
    lines = [f"line {n} {'x' * (n % 97)}".encode() for n in range(3000)]
    body = b"Subject: long\r\n\r\n" + b"\r\n".join(lines) + b"\r\n\xff\x00bin\r\n"
    with stage(spool, body, chunk_size) as staged:
        deliver(staged, [target(maildir)], DedupeIndex())

    [info] = list_messages(maildir)
    with open_message(maildir, info.name) as stream:
        sent = b"".join(iter_crlf(stream, 4096))
    assert sent == PREFIX.replace(b"\n", b"\r\n") + body
    assert (info.size, info.vsize) == (info.path.stat().st_size, len(sent))


def test_abort_leaves_nothing_and_may_be_repeated(spool: Path) -> None:
    """Aborted mid-body, twice: the staging file is gone and writing is refused."""
    staged = StagedMessage(spool, PREFIX)
    staged.write(b"half a body\r\n" * 10000)
    staged.abort()
    staged.abort()

    assert names(spool) == []
    with pytest.raises(ValueError):
        staged.write(b"more\r\n")


def test_deliver_needs_a_committed_message(tmp_path: Path, spool: Path) -> None:
    """deliver() before commit() is a programming error and writes nothing."""
    maildir = mailbox(tmp_path, "alice")
    with StagedMessage(spool, PREFIX) as staged, pytest.raises(ValueError):
        deliver(staged, [target(maildir)], DedupeIndex())
    assert names(maildir / "new") == []


def test_other_filesystem_gets_a_copy_through_tmp(
    tmp_path: Path, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """link() says EXDEV: the message is copied via tmp/ and renamed into new/."""
    maildir = mailbox(tmp_path, "alice")
    patch_os(monkeypatch, "link", errno.EXDEV, lambda *args: True)
    with stage(spool) as staged:
        [result] = deliver(staged, [target(maildir)], DedupeIndex())
        staged_inode = os.stat(staged.path).st_ino

    assert result.outcome is DELIVERED
    path = maildir / "new" / str(result.name)
    assert path.read_bytes() == STORED
    assert path.stat().st_ino != staged_inode
    assert names(maildir / "tmp") == []


def test_no_space_for_one_copy_leaves_nothing_and_spares_the_others(
    tmp_path: Path, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alice's copy hits ENOSPC: nothing in her tmp/ or new/; Bob still gets his."""
    alice, bob = mailbox(tmp_path, "alice"), mailbox(tmp_path, "bob")
    with stage(spool) as staged:
        patch_os(monkeypatch, "link", errno.EXDEV, lambda src, dst: "alice" in str(dst))
        patch_os(monkeypatch, "write", errno.ENOSPC, lambda *args: True)
        results = deliver(staged, [target(alice), target(bob)], DedupeIndex())

    assert [(r.outcome, r.name is None) for r in results] == [
        (DeliveryOutcome.NO_SPACE, True),
        (DELIVERED, False),
    ]
    assert (names(alice / "new"), names(alice / "tmp")) == ([], [])
    assert names(bob / "new") == [results[1].name]


def test_no_space_while_staging_is_raised_and_abort_cleans_up(
    spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while writing the staging file reaches the caller; abort removes it."""
    staged = StagedMessage(spool, PREFIX)
    patch_os(monkeypatch, "write", errno.ENOSPC, lambda *args: True)
    with pytest.raises(OSError) as raised:
        staged.write(b"x" * 70000 + b"\r\n")
    staged.abort()

    assert raised.value.errno == errno.ENOSPC
    assert names(spool) == []


def test_other_errors_fail_one_target_with_a_traceback(
    tmp_path: Path,
    spool: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """EACCES on Alice's new/: FAILED for her, logged with traceback; Bob delivered."""
    alice, bob = mailbox(tmp_path, "alice"), mailbox(tmp_path, "bob")
    patch_os(monkeypatch, "link", errno.EACCES, lambda src, dst: "alice" in str(dst))
    with stage(spool) as staged, caplog.at_level(logging.ERROR):
        results = deliver(staged, [target(alice, "Q1"), target(bob)], DedupeIndex())

    assert [r.outcome for r in results] == [DeliveryOutcome.FAILED, DELIVERED]
    assert names(alice / "new") == []
    [record] = caplog.records
    assert record.getMessage() == "queue=Q1 domain=example.org user=alice status=failed"
    assert record.exc_info is not None


def test_failed_fsync_of_new_takes_the_message_back(
    tmp_path: Path, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync of new/ fails: the link is removed again and a retry is not a duplicate."""
    maildir = mailbox(tmp_path, "alice")
    index = DedupeIndex()
    is_directory = lambda fd: stat.S_ISDIR(os.fstat(fd).st_mode)  # noqa: E731
    with stage(spool) as staged:
        with monkeypatch.context() as patched:
            patch_os(patched, "fsync", errno.EIO, is_directory)
            [failed] = deliver(staged, [target(maildir, "Q1")], index)
        [retried] = deliver(staged, [target(maildir, "Q1")], index)

    assert (failed.outcome, failed.name) == (DeliveryOutcome.FAILED, None)
    assert retried.outcome is DELIVERED
    assert names(maildir / "new") == [retried.name]


def test_steps_hand_the_fsyncs_to_the_caller(tmp_path: Path, spool: Path) -> None:
    """Two users: their two new/ folders yielded once; a reported error undoes one."""
    alice, bob = mailbox(tmp_path, "alice"), mailbox(tmp_path, "bob")
    index = DedupeIndex()
    with stage(spool) as staged:
        steps = deliver_in_steps(staged, [target(alice, "Q1"), target(bob)], index)
        directories = next(steps)
        failure = OSError(errno.EIO, os.strerror(errno.EIO))
        results = finish_steps(steps, [failure, None])
        [retried] = deliver(staged, [target(alice, "Q1")], index)

    assert directories == [str(alice / "new"), str(bob / "new")]
    assert [r.outcome for r in results] == [DeliveryOutcome.FAILED, DELIVERED]
    assert names(alice / "new") == [retried.name]
    assert names(bob / "new") == [results[1].name]


def test_placing_reads_disk_for_quota_and_unread_names(tmp_path: Path) -> None:
    """Quota or a dedupe key in a Maildir not yet read: the placing needs a thread."""
    maildir = mailbox(tmp_path, "alice")
    index = DedupeIndex()
    quota = QuotaLimits(bytes=1000)

    assert not placing_reads_disk(target(maildir), index)
    assert placing_reads_disk(target(maildir, quota=quota), index)
    assert placing_reads_disk(target(maildir, "Q1"), index)
    index.for_maildir(maildir).find("unused")
    assert not placing_reads_disk(target(maildir, "Q1"), index)


def test_retry_with_the_same_queue_id_is_a_duplicate(
    tmp_path: Path, spool: Path
) -> None:
    """Same queue id and recipient twice: the second finds the first, writes nothing."""
    maildir = mailbox(tmp_path, "alice")
    index = DedupeIndex()
    with stage(spool) as first:
        [original] = deliver(first, [target(maildir, "4XyZ1")], index)
    with stage(spool) as second:
        [retry] = deliver(second, [target(maildir, "4XyZ1")], index)

    assert retry == DeliveryResult(target(maildir, "4XyZ1"), DUPLICATE, original.name)
    assert names(maildir / "new") == [original.name]


def test_dedupe_is_per_recipient_and_needs_a_key(tmp_path: Path, spool: Path) -> None:
    """Same queue id, other recipient: delivered; no key at all: always delivered."""
    maildir = mailbox(tmp_path, "alice")
    index = DedupeIndex()
    first = target(maildir, "4XyZ1")
    other = MailboxTarget(maildir, "alias@example.org", "4XyZ1")
    keyless = target(maildir)
    with stage(spool) as staged:
        results = deliver(staged, [first, other, keyless, keyless], index)

    assert [r.outcome for r in results] == [DELIVERED] * 4
    assert len(names(maildir / "new")) == 4


def test_a_fresh_index_finds_earlier_deliveries_on_disk(
    tmp_path: Path, spool: Path
) -> None:
    """New process (fresh index): the tag is found in cur/ after a reader moved it."""
    maildir = mailbox(tmp_path, "alice")
    with stage(spool) as first:
        [original] = deliver(first, [target(maildir, "4XyZ1")], DedupeIndex())
    seen = f"{original.name}:2,S"
    os.rename(maildir / "new" / str(original.name), maildir / "cur" / seen)

    with stage(spool) as second:
        [retry] = deliver(second, [target(maildir, "4XyZ1")], DedupeIndex())
    assert (retry.outcome, retry.name) == (DUPLICATE, seen)
    assert (names(maildir / "new"), names(maildir / "cur")) == ([], [seen])


def test_another_worker_delivery_is_found_through_the_shared_table(
    tmp_path: Path, spool: Path
) -> None:
    """A read the Maildir before B delivered: the table sends A to read it again."""
    maildir = mailbox(tmp_path, "alice")
    table = SharedTags(64)
    worker_a, worker_b = DedupeIndex(shared=table), DedupeIndex(shared=table)
    with stage(spool) as staged:
        deliver(staged, [target(maildir, "Q0")], worker_a)
        [original] = deliver(staged, [target(maildir, "Q1")], worker_b)
    seen = f"{original.name}:2,S"
    os.rename(maildir / "new" / str(original.name), maildir / "cur" / seen)

    with stage(spool) as retry_body:
        [retry] = deliver(retry_body, [target(maildir, "Q1")], worker_a)
    assert (retry.outcome, retry.name) == (DUPLICATE, seen)
    assert len(names(maildir / "cur")) == 1
    assert sorted(os.listdir(maildir)) == ["cur", "new", "tmp"]


def test_a_tag_in_the_table_whose_message_is_gone_is_not_a_copy(
    tmp_path: Path, spool: Path
) -> None:
    """The message was read and deleted since: the Maildir is read, and it delivers."""
    maildir = mailbox(tmp_path, "alice")
    table = SharedTags(64)
    worker_a, worker_b = DedupeIndex(shared=table), DedupeIndex(shared=table)
    with stage(spool) as staged:
        deliver(staged, [target(maildir, "Q0")], worker_a)
        [original] = deliver(staged, [target(maildir, "Q1")], worker_b)
    (maildir / "new" / str(original.name)).unlink()

    with stage(spool) as staged:
        [retry] = deliver(staged, [target(maildir, "Q1")], worker_a)
    assert retry.outcome is DELIVERED
    assert len(names(maildir / "new")) == 2


def test_the_table_is_shared_with_a_forked_child(tmp_path: Path, spool: Path) -> None:
    """What a forked child adds, its parent (and so a sibling) sees."""
    table = SharedTags(64)
    child = os.fork()
    if child == 0:
        table.add("/spool/alice", "0123456789ab")
        os._exit(0)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert table.seen("/spool/alice", "0123456789ab", since=time.time() - 60)
    assert not table.seen("/spool/bob", "0123456789ab", since=time.time() - 60)


def test_the_table_forgets_the_oldest_of_a_full_run() -> None:
    """Past its size the table drops the oldest entries, and only those."""
    now = [1000.0]
    table = SharedTags(8, clock=lambda: now[0])
    for number in range(8):
        now[0] += 1
        table.add("/m", f"{number:012x}")
    now[0] += 1
    table.add("/m", "ffffffffffff")
    present = [table.seen("/m", f"{n:012x}", since=0) for n in range(8)]
    assert present == [False] + [True] * 7
    assert table.seen("/m", "ffffffffffff", since=0)
    assert not table.seen("/m", "ffffffffffff", since=now[0] + 1)


def test_the_table_size_is_checked() -> None:
    """A size that is not a power of two, or smaller than a probe run, is refused."""
    for slots in (0, 4, 100):
        with pytest.raises(ValueError, match="power of two"):
            SharedTags(slots)


def test_tags_older_than_the_window_are_forgotten(tmp_path: Path, spool: Path) -> None:
    """A week and a day later the same key delivers again, with old and fresh index."""
    maildir = mailbox(tmp_path, "alice")

    def eight_days_on() -> float:
        return time.time() + 8 * DAY

    later = DedupeIndex(clock=eight_days_on)
    with stage(spool) as staged:
        [kept] = deliver(staged, [target(maildir, "Q1")], later)
        [again] = deliver(staged, [target(maildir, "Q1")], later)
        [fresh] = deliver(
            staged, [target(maildir, "Q1")], DedupeIndex(clock=eight_days_on)
        )

    assert [kept.outcome, again.outcome, fresh.outcome] == [DELIVERED] * 3


def test_concurrent_retries_deliver_exactly_once(tmp_path: Path, spool: Path) -> None:
    """Eight threads deliver the same queue id at once: one copy, seven duplicates."""
    maildir = mailbox(tmp_path, "alice")
    index = DedupeIndex()
    outcomes: list[DeliveryOutcome] = []
    start = threading.Barrier(8)

    def attempt() -> None:
        with stage(spool) as staged:
            start.wait()
            [result] = deliver(staged, [target(maildir, "Q1")], index)
        outcomes.append(result.outcome)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(o.value for o in outcomes) == ["delivered"] + ["duplicate"] * 7
    assert len(names(maildir / "new")) == 1


def test_a_target_header_gets_its_own_copy(tmp_path: Path, spool: Path) -> None:
    """Per-recipient Delivered-To: each target gets a copy with it, sizes included."""
    alice, bob = mailbox(tmp_path, "alice"), mailbox(tmp_path, "bob")
    with stage(spool) as staged:
        results = deliver(
            staged,
            [
                target(m, header=f"Delivered-To: {m.parent.name}\n".encode())
                for m in (alice, bob)
            ],
            DedupeIndex(),
        )

    for maildir, result in zip((alice, bob), results, strict=True):
        path = maildir / "new" / str(result.name)
        content = path.read_bytes()
        assert content == f"Delivered-To: {maildir.parent.name}\n".encode() + STORED
        vsize = len(content) + content.count(b"\n")
        assert str(result.name).endswith(f",S={len(content)},W={vsize}")
        assert path.stat().st_nlink == 1
    assert names(alice / "tmp") == names(bob / "tmp") == []


def test_header_must_be_whole_lf_lines() -> None:
    """A header with CR or without a final LF is refused when the target is made."""
    for header in (b"Delivered-To: a\r\n", b"Delivered-To: a"):
        with pytest.raises(ValueError):
            MailboxTarget(Path("/x"), "a@example.org", None, header=header)


def test_quota_refuses_and_counts(tmp_path: Path, spool: Path) -> None:
    """A full mailbox answers QUOTA_EXCEEDED and gets nothing; others are counted."""
    full, roomy = mailbox(tmp_path, "alice"), mailbox(tmp_path, "bob")
    small, large = QuotaLimits(bytes=10), QuotaLimits(bytes=10**6, messages=10)
    with stage(spool) as staged:
        results = deliver(
            staged,
            [target(full, quota=small), target(roomy, quota=large)],
            DedupeIndex(),
        )

    assert [r.outcome for r in results] == [DeliveryOutcome.QUOTA_EXCEEDED, DELIVERED]
    assert names(full / "new") == []
    assert read_usage(roomy, large) == Usage(len(STORED), 1)
    # The check built the file from the empty Maildir, the delivery added a line.
    quota_file = f"1000000S,10C\n0 0\n{len(STORED)} 1\n"
    assert (roomy / "maildirsize").read_text() == quota_file


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_owners_are_set_and_another_owner_gets_a_copy(
    tmp_path: Path, spool: Path
) -> None:
    """Two owners: the first shares the staged inode (chowned), the second a copy."""
    alice, bob = mailbox(tmp_path, "alice"), mailbox(tmp_path, "bob")
    with stage(spool) as staged:
        results = deliver(
            staged,
            [target(alice, uid=1001, gid=2001), target(bob, uid=1002, gid=2002)],
            DedupeIndex(),
        )
        staged_inode = os.stat(staged.path).st_ino

    first = os.stat(alice / "new" / str(results[0].name))
    second = os.stat(bob / "new" / str(results[1].name))
    assert (first.st_uid, first.st_gid, first.st_ino) == (1001, 2001, staged_inode)
    assert (second.st_uid, second.st_gid, second.st_nlink) == (1002, 2002, 1)


def test_names_follow_the_maildir_and_dovecot_form() -> None:
    """A name carries time, usec, pid, sequence, tag, host and both sizes."""
    tag = dedupe_tag("4XyZ1", "alice@example.org")
    first, second = unique_name(120, 125, tag), unique_name(120, 125, tag)

    pattern = rf"\d{{10}}\.M\d{{1,6}}P{os.getpid()}Q(\d+)D{tag}\.[^/:]+,S=120,W=125"
    assert re.fullmatch(pattern, first) and re.fullmatch(pattern, second)
    assert first != second
    assert re.fullmatch(r"[0-9a-f]{12}", tag)
    assert tag == dedupe_tag("4XyZ1", "alice@example.org")
    assert tag != dedupe_tag("4XyZ1", "bob@example.org")


@pytest.mark.parametrize(
    ("host", "safe"),
    [
        ("mx1.example.org", "mx1.example.org"),
        ("a/b", "a\\057b"),
        ("a:b", "a\\072b"),
        ("a,S=1", "a\\054S=1"),
        ("", "localhost"),
    ],
)
def test_host_names_are_made_safe(host: str, safe: str) -> None:
    """Slash, colon and comma in the host name are written as octal escapes."""
    assert sanitize_hostname(host) == safe


def test_ensure_maildir_creates_parents_with_exact_mode(tmp_path: Path) -> None:
    """Parents and tmp/ new/ cur/ are made 0700 whatever the umask; twice is fine."""
    old_umask = os.umask(0o077 ^ 0o777)
    try:
        path = ensure_maildir(tmp_path / "d" / "u" / "Maildir")
        ensure_maildir(path)
    finally:
        os.umask(old_umask)

    for directory in (path.parent, path, path / "tmp", path / "new", path / "cur"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_clean_tmp_removes_only_files_idle_for_36_hours(tmp_path: Path) -> None:
    """tmp/ files: kept at 35 hours idle, removed at 37; directories never touched."""
    maildir = mailbox(tmp_path, "alice")
    for name in ("a", "b"):
        (maildir / "tmp" / name).write_bytes(b"partial")
    (maildir / "tmp" / "subdir").mkdir()
    old = time.time() - 40 * 3600
    os.utime(maildir / "tmp" / "a", (old, old))

    assert clean_tmp(maildir, now=time.time() + 35 * 3600) == 0
    assert clean_tmp(maildir, now=time.time() + 37 * 3600) == 2
    assert names(maildir / "tmp") == ["subdir"]
    assert clean_stale(tmp_path / "missing", 60) == 0


def test_reader_lists_in_order_and_follows_flag_changes(tmp_path: Path) -> None:
    """Names without S=/W= get sizes from the file; a renamed message still opens."""
    maildir = mailbox(tmp_path, "alice")
    (maildir / "cur" / "1700000002.M5P1.host:2,S").write_bytes(b"b\nbb\n")
    (maildir / "new" / "1700000001.M12P1.host,S=3,W=4").write_bytes(b"aa\n")
    (maildir / "new" / ".hidden").write_bytes(b"not a message")

    first, second = list_messages(maildir)
    assert (first.uid, first.size, first.vsize) == (
        "1700000001.M12P1.host,S=3,W=4",
        3,
        4,
    )
    assert (second.uid, second.size, second.vsize) == ("1700000002.M5P1.host", 5, 7)

    os.rename(second.path, maildir / "cur" / "1700000002.M5P1.host:2,ST")
    with open_message(maildir, second.name) as stream:
        assert stream.read() == b"b\nbb\n"
    with pytest.raises(ValueError):
        open_message(maildir, "../../etc/passwd")


@pytest.mark.parametrize(
    "chunks",
    [
        [b"Subject: a\r\n\r\nbody\r\n"],
        [b"a\r\n", b"b\r\n\r\n", b"", b"c"],
        [b"x" * 70000 + b"\r\n", b"\r\n" * 40000],
    ],
)
def test_crlf_only_writes_store_what_plain_writes_store(
    spool: Path, chunks: list[bytes]
) -> None:
    """The one-pass rewrite of normalised chunks: same octets, S= and W= sizes."""
    plain, fast = StagedMessage(spool, PREFIX), StagedMessage(spool, PREFIX)
    for chunk in chunks:
        plain.write(chunk)
        fast.write(chunk, crlf_only=True)
    plain.commit()
    fast.commit()
    assert fast.path.read_bytes() == plain.path.read_bytes()
    assert (fast.size, fast.vsize) == (plain.size, plain.vsize)
    plain.abort()
    fast.abort()


def test_a_keyed_delivery_leaves_nothing_beside_the_message(
    tmp_path: Path, spool: Path
) -> None:
    """A keyed delivery, shared or not, makes no file or folder but the message."""
    maildir = mailbox(tmp_path, "alice")
    shared = DedupeIndex(shared=SharedTags(64))
    with stage(spool) as staged:
        [first] = deliver(staged, [target(maildir, "Q1")], DedupeIndex())
        [again] = deliver(staged, [target(maildir, "Q1")], DedupeIndex())
        [other] = deliver(staged, [target(maildir, "Q2")], shared)
    assert (first.outcome, again.outcome) == (DELIVERED, DUPLICATE)
    assert other.outcome is DELIVERED
    assert sorted(os.listdir(maildir)) == ["cur", "new", "tmp"]
    assert len(names(maildir / "new")) == 2
