"""The README's demo runs on embedded defaults and shows two spools."""

import subprocess
import sys
from pathlib import Path


def test_demo_delivers_into_two_domains(tmp_path: Path) -> None:
    """`mdmail demo` builds its state, delivers over LMTP, and each foo gets mail."""
    done = subprocess.run(
        [sys.executable, "-m", "mdmail", "demo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "foo@abc.example with password 'abc-secret': accepted" in done.stdout
    assert "foo@xyz.example with password 'abc-secret': refused" in done.stdout
    assert "foo@abc.example: 2 message(s)" in done.stdout
    assert "foo@xyz.example: 1 message(s)" in done.stdout
    state = tmp_path / "demo-state" / "domains"
    abc = list((state / "abc.example/mail/foo/Maildir/new").iterdir())
    xyz = list((state / "xyz.example/mail/foo/Maildir/new").iterdir())
    assert len(abc) == 2 and len(xyz) == 1
    assert b"Hello foo at XYZ" in xyz[0].read_bytes()


def test_demo_fetches_each_domain_over_pop3_on_its_own_address(tmp_path: Path) -> None:
    """Step 6: plain foo on 127.0.0.2 reads abc's spool, on 127.0.0.3 xyz's."""
    done = subprocess.run(
        [sys.executable, "-m", "mdmail", "demo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    pop3 = done.stdout.split("6. Fetching over POP3")[1].splitlines()[1:]
    assert [line.split(" ", 3)[-1] for line in pop3[:1]] == [
        "(abc.example), USER foo, PASS abc-secret:"
    ]
    assert pop3[0].strip().startswith("127.0.0.2:")
    assert [line.strip() for line in pop3[1:4]] == [
        "+OK logged in: 2 message(s), 295 octets",
        "RETR 1: Hello foo at ABC",
        "RETR 2: Sales enquiry",
    ]
    assert pop3[4].strip().startswith("127.0.0.3:")
    assert [line.strip() for line in pop3[5:7]] == [
        "+OK logged in: 1 message(s), 155 octets",
        "RETR 1: Hello foo at XYZ",
    ]
    assert pop3[8].strip() == "-ERR [AUTH] Authentication failed"
