"""mdmail import: a domain brought over from a Dovecot passwd-file and its Maildirs."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mdcore.accounts import parse_line
from mdcore.maildrop import UIDL_MAP_FILE
from mdcore.passwords import hash_password, verify_password

TIMEOUT = 60

# The messages of one Maildir: relative path -> bytes, dovecot-uidlist included.
Maildir = dict[str, bytes]


def dovecot_hash(scheme: str, password: str) -> str:
    """A hash as Dovecot makes it: doveadm pw when installed, else our own."""
    doveadm = shutil.which("doveadm")
    if doveadm is None:
        return hash_password(password, scheme)
    rounds = ["-r", "5"] if scheme == "BLF-CRYPT" else []
    result = subprocess.run(
        [doveadm, "pw", "-s", scheme, *rounds, "-p", password],
        capture_output=True,
        text=True,
        check=True,
        timeout=TIMEOUT,
    )
    return result.stdout.strip()


def message(subject: str) -> bytes:
    """A small message with CRLF line ends, as some Maildirs hold them."""
    head = f"From: someone@elsewhere.test\r\nSubject: {subject}\r\n"
    return f"{head}\r\nBody of {subject}.\r\n".encode("ascii")


def uidlist(*names: str) -> bytes:
    """A dovecot-uidlist (version 3) naming the given messages."""
    lines = [f"3 V1700000000 N{len(names) + 1} G0123456789abcdef"]
    lines += [f"{uid} :{name.split(':')[0]}" for uid, name in enumerate(names, 1)]
    return ("\n".join(lines) + "\n").encode("ascii")


def write_maildir(path: Path, messages: Maildir) -> None:
    """Create a Maildir with its three folders and the given files."""
    for folder in ("cur", "new", "tmp"):
        (path / folder).mkdir(parents=True, exist_ok=True)
    for name, data in messages.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)


def files_of(path: Path) -> Maildir:
    """Every file under path with its bytes, less the UIDL map the import adds."""
    return {
        str(item.relative_to(path)): item.read_bytes()
        for item in sorted(path.rglob("*"))
        if item.is_file() and item.name != UIDL_MAP_FILE
    }


ALICE_MAIL: Maildir = {
    "cur/1700000001.M1P1.old:2,S": message("first"),
    "cur/1700000002.M2P1.old:2,RS": message("second"),
    "new/1700000003.M3P1.old": message("third"),
    ".Sent/cur/1700000004.M4P1.old:2,S": message("sent"),
    ".Sent/maildirfolder": b"",
    "dovecot-uidlist": uidlist(
        "1700000001.M1P1.old:2,S", "1700000002.M2P1.old:2,RS", "1700000003.M3P1.old"
    ),
    "dovecot-uidvalidity": b"6553f100\n",
}
BOB_MAIL: Maildir = {
    "cur/1700000010.M1P2.old:2,": message("for bob"),
    "dovecot-uidlist": uidlist("1700000010.M1P2.old:2,"),
}
CAROL_MAIL: Maildir = {"new/1700000020.M1P3.old": message("for carol")}


@pytest.fixture
def dovecot(tmp_path: Path) -> Path:
    """A Dovecot layout: users of a.test and b.test, Maildirs under mail/%d/%n."""
    source = tmp_path / "dovecot"
    passwd = [
        "# users of two domains",
        f"alice@a.test:{dovecot_hash('SHA512-CRYPT', 'alice-pw')}:5000:5000::::",
        f"bob@a.test:{dovecot_hash('BLF-CRYPT', 'bob-pw')}:5000:5000::::"
        "userdb_quota_rule=*:storage=100M",
        "carol@b.test:{PLAIN}x:5000:5000::::",
    ]
    source.mkdir()
    (source / "passwd").write_text("\n".join(passwd) + "\n", encoding="utf-8")
    write_maildir(source / "mail" / "a.test" / "alice" / "Maildir", ALICE_MAIL)
    write_maildir(source / "mail" / "a.test" / "bob" / "Maildir", BOB_MAIL)
    write_maildir(source / "mail" / "b.test" / "carol" / "Maildir", CAROL_MAIL)
    return source


def mdmail(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run mdmail on a state root as its own process."""
    command = [sys.executable, "-m", "mdmail", "--state-root", str(state)]
    environment = {k: v for k, v in os.environ.items() if k != "MDMAIL_CONFIG"}
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=environment,
        stdin=subprocess.DEVNULL,
    )


def import_a(
    state: Path, dovecot: Path, *options: str
) -> subprocess.CompletedProcess[str]:
    """Import a.test from the Dovecot layout."""
    template = str(dovecot / "mail" / "%d" / "%n" / "Maildir")
    passwd = str(dovecot / "passwd")
    return mdmail(
        state, *options, "import", "a.test", "--passwd", passwd, "--maildirs", template
    )


def stored_hashes(state: Path, domain: str) -> dict[str, str]:
    """Account name -> stored hash, from the domain's passwd file."""
    text = (state / "domains" / domain / "passwd").read_text(encoding="utf-8")
    return {
        line.split(":", 1)[0]: parse_line(line).password for line in text.splitlines()
    }


def test_import_one_domain(tmp_path: Path, dovecot: Path) -> None:
    """Scenario: only a.test's users come over, hashes verify, mail is identical."""
    state = tmp_path / "state"

    result = import_a(state, dovecot)

    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "imported 2 accounts and 5 messages into a.test\n"
    assert sorted(os.listdir(state / "domains")) == ["a.test"]
    hashes = stored_hashes(state, "a.test")
    assert sorted(hashes) == ["alice", "bob"]
    assert verify_password(hashes["alice"], "alice-pw")
    assert verify_password(hashes["bob"], "bob-pw")
    assert not verify_password(hashes["bob"], "alice-pw")

    mail = state / "domains" / "a.test" / "mail"
    assert files_of(mail / "alice" / "Maildir") == ALICE_MAIL
    assert files_of(mail / "bob" / "Maildir") == BOB_MAIL
    # The UIDLs Dovecot's POP3 showed (%08Xu%08Xv) are kept for our POP3.
    assert (mail / "bob" / "Maildir" / UIDL_MAP_FILE).read_text() == (
        "1700000010.M1P2.old 000000016553f100\n"
    )
    for name in ("cur", "new", "tmp"):
        assert (mail / "bob" / "Maildir" / name).is_dir()


def test_import_keeps_quota_and_prints_json(tmp_path: Path, dovecot: Path) -> None:
    """Scenario: --json reports the counts; a Dovecot quota rule becomes the quota."""
    state = tmp_path / "state"

    result = import_a(state, dovecot, "--json")

    assert (result.returncode, result.stderr) == (0, "")
    assert json.loads(result.stdout) == {
        "domain": "a.test",
        "accounts": 2,
        "messages": 5,
    }
    shown = mdmail(state, "account", "show", "bob@a.test").stdout
    assert shown.splitlines()[0] == "bob@a.test [active] 104857600 bytes"


def test_import_home_field_and_case(tmp_path: Path) -> None:
    """Scenario: without --maildirs the home field is used; a capital goes lower."""
    home = tmp_path / "home" / "dave"
    write_maildir(home / "Maildir", BOB_MAIL)
    passwd = tmp_path / "passwd"
    passwd.write_text(f"Dave@a.test:{{PLAIN}}pw::::{home}::\n", encoding="utf-8")
    state = tmp_path / "state"

    result = mdmail(state, "import", "a.test", "--passwd", str(passwd))

    assert (result.returncode, result.stderr) == (0, "")
    assert sorted(stored_hashes(state, "a.test")) == ["dave"]
    maildir = state / "domains" / "a.test" / "mail" / "dave" / "Maildir"
    assert files_of(maildir) == BOB_MAIL
    assert not (state / "domains" / "a.test" / "mail" / "Dave").exists()


def snapshot(top: Path) -> dict[str, bytes | None]:
    """Every path under top with its bytes (None for a folder)."""
    return {
        str(path.relative_to(top)): None if path.is_dir() else path.read_bytes()
        for path in top.rglob("*")
    }


def test_import_twice_changes_nothing(tmp_path: Path, dovecot: Path) -> None:
    """Scenario: an import clashing with bob is refused before alice is added."""
    state = tmp_path / "state"
    assert import_a(state, dovecot).returncode == 0
    passwd = state / "domains" / "a.test" / "passwd"
    text = passwd.read_text(encoding="utf-8")
    passwd.write_text(text.replace("alice:", "alix:"), encoding="utf-8")
    before = snapshot(state)

    result = import_a(state, dovecot)

    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        "mdmail: error: bob@a.test already exists (or is there twice)\n"
    )
    assert snapshot(state) == before


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("../x@a.test:{PLAIN}pw::::::", "line 2: local part '../x'"),
        (":{PLAIN}pw::::::", "line 2: expected at least user:password"),
        ("eve@a..test:{PLAIN}pw::::::", "line 2: invalid domain name"),
    ],
    ids=["traversal", "no-user", "bad-domain"],
)
def test_bad_passwd_line_changes_nothing(
    tmp_path: Path, line: str, problem: str
) -> None:
    """Scenario: a bad line is one error naming file and line; nothing is created."""
    passwd = tmp_path / "passwd"
    passwd.write_text(f"ok@a.test:{{PLAIN}}pw::::::\n{line}\n", encoding="utf-8")
    state = tmp_path / "state"

    result = mdmail(state, "import", "a.test", "--passwd", str(passwd))

    assert (result.returncode, result.stdout) == (1, "")
    (message_line,) = result.stderr.splitlines()
    assert message_line.startswith(f"mdmail: error: {passwd}: {problem}")
    assert not state.exists()


def test_unreadable_passwd_file(tmp_path: Path) -> None:
    """Scenario: a missing or non-UTF-8 passwd-file is one error line naming it."""
    missing = tmp_path / "absent"
    binary = tmp_path / "binary"
    binary.write_bytes(b"a@a.test:{PLAIN}\xff\n")
    state = tmp_path / "state"

    for passwd, problem in [
        (missing, "cannot read: No such file or directory"),
        (binary, "not UTF-8 text"),
    ]:
        result = mdmail(state, "import", "a.test", "--passwd", str(passwd))
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == f"mdmail: error: {passwd}: {problem}\n"
    assert not state.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")
def test_import_into_owned_domain(tmp_path: Path, dovecot: Path) -> None:
    """Scenario: mail imported into a domain with uid/gid belongs to that owner."""
    state = tmp_path / "state"
    added = mdmail(
        state, "domain", "add", "a.test", "--set", "uid=1234", "--set", "gid=1234"
    )
    assert added.returncode == 0

    assert import_a(state, dovecot).returncode == 0

    tree = state / "domains" / "a.test"
    wrong = [
        str(path.relative_to(tree))
        for path in [tree, *tree.rglob("*")]
        if (path.lstat().st_uid, path.lstat().st_gid) != (1234, 1234)
    ]
    assert wrong == []
