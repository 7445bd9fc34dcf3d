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
