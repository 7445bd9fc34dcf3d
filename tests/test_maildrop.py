"""The POP3 maildrop: exclusive lock, stable UIDLs, deletion only on request."""

import os
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from mdcore import maildrop as maildrop_module
from mdcore.listing import LISTING_FILE
from mdcore.mailbox_reader import list_messages
from mdcore.maildir import ensure_maildir
from mdcore.maildrop import (
    UIDL_MAP_FILE,
    DropMessage,
    ListingCache,
    Maildrop,
    MaildropInUseError,
    read_uidl_map,
    uidls_from_dovecot,
)
from tests.conftest import deliver_message


def put(maildir: Path, body: bytes) -> None:
    """Deliver one message the way the LMTP server does."""
    deliver_message(maildir, "foo@abc.example", body)


@pytest.fixture
def maildir(tmp_path: Path) -> Path:
    """A Maildir with three messages."""
    path = tmp_path / "Maildir"
    ensure_maildir(path, None, None)
    for number in range(3):
        put(path, f"Subject: {number}\r\n\r\nline\r\n.dot\r\n".encode())
    return path


def test_second_session_is_refused(maildir: Path) -> None:
    """One session at a time (RFC 1939 section 8); the lock goes with close()."""
    first = Maildrop.open(maildir)
    with pytest.raises(MaildropInUseError):
        Maildrop.open(maildir)
    first.close()
    Maildrop.open(maildir).close()


def test_sizes_are_the_octets_sent(maildir: Path) -> None:
    """A message's size counts CRLF line ends, as RETR sends it."""
    drop = Maildrop.open(maildir)
    try:
        message = drop.messages[0]
        with drop.read(0) as stream:
            stored = stream.read()
        assert message.size == len(stored.replace(b"\n", b"\r\n"))
    finally:
        drop.close()


def test_uidls_are_stable_and_valid(maildir: Path) -> None:
    """UIDLs survive reopening and new deliveries, and fit RFC 1939 section 7."""
    drop = Maildrop.open(maildir)
    before = [message.uidl for message in drop.messages]
    drop.close()
    put(maildir, b"Subject: later\r\n\r\nx\r\n")
    drop = Maildrop.open(maildir)
    after = [message.uidl for message in drop.messages]
    drop.close()
    assert after[:3] == before
    assert len(set(after)) == 4
    assert all(0 < len(uidl) <= 70 and uidl.isprintable() for uidl in after)


def test_delete_removes_only_marked(maildir: Path) -> None:
    """delete() removes exactly the listed messages."""
    drop = Maildrop.open(maildir)
    kept = drop.messages[1].uidl
    assert drop.delete([0, 2]) == 0
    drop.close()
    drop = Maildrop.open(maildir)
    assert [message.uidl for message in drop.messages] == [kept]
    drop.close()


def test_imported_dovecot_uidls_are_kept(maildir: Path) -> None:
    """UIDLs from dovecot-uidlist (%08Xu%08Xv) win over base names."""
    names = sorted(p.name.split(":")[0] for p in (maildir / "new").iterdir())
    header = "3 V1700000000 N3 G0123456789abcdef\n"
    lines = "".join(f"{uid} :{name}\n" for uid, name in enumerate(names[:2], 1))
    (maildir / "dovecot-uidlist").write_text(header + lines)
    table = uidls_from_dovecot(maildir)
    assert table[names[0]] == "000000016553f100"
    (maildir / UIDL_MAP_FILE).write_text(
        "".join(f"{name} {uidl}\n" for name, uidl in table.items())
    )
    assert read_uidl_map(maildir) == table
    drop = Maildrop.open(maildir)
    uidls = {message.info.uid: message.uidl for message in drop.messages}
    drop.close()
    assert uidls[names[0]] == "000000016553f100"
    assert uidls[names[1]] == "000000026553f100"
    assert uidls[names[2]] == names[2]


def age(maildir: Path, seconds: float) -> None:
    """Set the times of new/ and cur/ back, as if untouched for a while."""
    past = time.time() - seconds
    for folder in ("new", "cur"):
        os.utime(maildir / folder, (past, past))


def test_listing_is_reused_while_the_maildir_is_unchanged(maildir: Path) -> None:
    """An old, unchanged Maildir is listed once; a delivery makes a fresh listing."""
    cache = ListingCache()
    age(maildir, 60)
    first = cache.listing(maildir)
    assert cache.listing(maildir) is first

    put(maildir, b"Subject: new\r\n\r\nbody\r\n")
    fresh = cache.listing(maildir)
    assert len(fresh) == len(first) + 1


def test_recent_listing_is_not_kept(maildir: Path) -> None:
    """Folders changed within the settle time are listed again at every login."""
    cache = ListingCache()
    first = cache.listing(maildir)
    second = cache.listing(maildir)
    assert second == first
    assert second is not first


def test_removal_by_another_reader_is_seen(maildir: Path) -> None:
    """A message removed outside our sessions is gone from the next listing."""
    cache = ListingCache()
    age(maildir, 60)
    first = cache.messages(maildir)
    (maildir / "new" / first[0].info.name).unlink()
    assert [m.uidl for m in cache.messages(maildir)] == [m.uidl for m in first[1:]]


def test_listings_held_are_bounded_by_messages(tmp_path: Path) -> None:
    """Past the bound, the least recently used listing is dropped first."""
    cache = ListingCache(max_messages=5)
    maildirs = []
    for name in ("one", "two"):
        path = tmp_path / name
        ensure_maildir(path, None, None)
        for number in range(3):
            put(path, f"Subject: {number}\r\n\r\nx\r\n".encode())
        age(path, 60)
        maildirs.append(path)
    first = cache.listing(maildirs[0])
    cache.listing(maildirs[1])  # 6 messages held > 5: the first listing goes
    assert cache.listing(maildirs[0]) is not first


def records(maildir: Path) -> list[tuple[str, int, int, str]]:
    """(name, size, vsize, uid) of every message, as the reference lister sees it."""
    return [
        (info.name, info.size, info.vsize, info.uid) for info in list_messages(maildir)
    ]


def listed(drop: Sequence[DropMessage]) -> list[tuple[str, int, int, str]]:
    """The same four fields from a maildrop's records."""
    return [(m.info.name, m.info.size, m.info.vsize, m.info.uid) for m in drop]


def test_a_new_server_starts_from_the_listing_file(maildir: Path) -> None:
    """The listing written to the Maildir serves a fresh cache without a scan."""
    age(maildir, 60)
    first = ListingCache().listing(maildir)
    assert (maildir / LISTING_FILE).exists()

    def no_scan(*args: object) -> None:
        raise AssertionError("the folders were read again")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(maildrop_module, "scan_maildir", no_scan)
        assert ListingCache().listing(maildir) == first


def test_a_broken_listing_file_is_ignored(maildir: Path) -> None:
    """A truncated or foreign listing file: the folders are read as if it were not."""
    age(maildir, 60)
    expected = records(maildir)
    ListingCache().listing(maildir)
    text = (maildir / LISTING_FILE).read_text()
    for broken in (text[: len(text) // 2], "garbage\n", text.replace("new/", "../")):
        (maildir / LISTING_FILE).write_text(broken)
        assert listed(ListingCache().messages(maildir)) == expected


def test_the_listing_follows_changes_by_difference(maildir: Path) -> None:
    """Moved to cur/ with flags, removed, newly delivered: as a full listing says."""
    cache = ListingCache(settle_ns=0)
    age(maildir, 60)
    first = cache.messages(maildir)
    moved = first[0].info.name
    os.rename(maildir / "new" / moved, maildir / "cur" / f"{moved}:2,S")
    (maildir / "new" / first[1].info.name).unlink()
    put(maildir, b"Subject: later\r\n\r\nx\r\n")
    # A name with no size fields, sized from the file, and one Dovecot made.
    (maildir / "cur" / "1.M1P1.host:2,").write_bytes(b"a\nb\n")
    (maildir / "new" / "1700000000.M5P7.host,S=3,W=4").write_bytes(b"ab\n")
    age(maildir, 60)

    assert listed(cache.messages(maildir)) == records(maildir)
    assert listed(ListingCache().messages(maildir)) == records(maildir)
    uidls = [m.uidl for m in cache.messages(maildir)]
    assert uidls[0] == "1.M1P1.host" and len(set(uidls)) == len(uidls) == 5


@pytest.mark.skipif(not hasattr(os, "RWF_NOWAIT"), reason="no preadv2 RWF_NOWAIT")
def test_read_cached_never_waits_for_the_disk(maildir: Path) -> None:
    """read_cached: None for a message whose pages were dropped from the cache
    (the POP3 server then reads it in a worker), the whole message once cached."""
    drop = Maildrop.open(maildir)
    try:
        whole = drop.read_whole(0)
        path = maildir / drop.listing.locations[0]
        fd = os.open(path, os.O_RDONLY)
        try:
            # Written out and fsynced already: the kernel may drop clean pages.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        cold = drop.read_cached(0)
        if cold is not None:
            pytest.skip("the kernel kept the pages (tmpfs or a busy cache)")
        assert drop.read_whole(0) == whole
        assert drop.read_cached(0) == whole
    finally:
        drop.close()


def test_read_cached_leaves_a_wrong_size_to_the_worker(maildir: Path) -> None:
    """A file longer than its name's S= says is not read on the loop."""
    drop = Maildrop.open(maildir)
    try:
        path = maildir / drop.listing.locations[0]
        with open(path, "ab") as stream:
            stream.write(b"more\n")
        if hasattr(os, "RWF_NOWAIT"):
            assert drop.read_cached(0) is None
        assert drop.read_whole(0).endswith(b"more\n")
    finally:
        drop.close()
