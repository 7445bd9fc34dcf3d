"""The POP3 maildrop: exclusive lock, stable UIDLs, deletion only on request."""

from pathlib import Path

import pytest

from mdcore.maildir import MailboxTarget, StagedMessage, deliver, ensure_maildir
from mdcore.maildrop import (
    UIDL_MAP_FILE,
    Maildrop,
    MaildropInUseError,
    read_uidl_map,
    uidls_from_dovecot,
)


def put(maildir: Path, body: bytes) -> None:
    """Deliver one message the way the LMTP server does."""
    staged = StagedMessage(maildir / "tmp")
    staged.write(body)
    staged.commit()
    deliver(staged, [MailboxTarget(maildir, "foo@abc.example", None)])
    staged.abort()


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
