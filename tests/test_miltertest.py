"""The real milter process driven by the real `miltertest`, one Lua script a rule."""

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mdcore.admin import Admin
from mdcore.layout import StateRoot
from tests.conftest import SECRET_HASH
from tests.milter_process import MilterProcess

SCRIPTS = Path(__file__).resolve().parent / "miltertest"
MILTERTEST = shutil.which("miltertest")
RUN_TIMEOUT = 60

pytestmark = pytest.mark.skipif(
    MILTERTEST is None,
    reason="miltertest is not installed (apt-get install miltertest)",
)


@pytest.fixture(scope="module")
def milter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilterProcess]:
    """One milter for every script: abc.example on 127.0.0.2, closed.example on .3."""
    folder = tmp_path_factory.mktemp("miltertest")
    root = StateRoot(folder / "state")
    admin = Admin(root)
    admin.add_domain("abc.example", {"max_message_size": 2000})
    admin.add_domain("closed.example", {"accept_other_domains": False})
    admin.add_account("abc.example", "alice", SECRET_HASH, hashed=True)
    admin.add_account("closed.example", "carol", SECRET_HASH, hashed=True)
    domains = [
        {"domain": "abc.example", "addresses": ["127.0.0.2"]},
        {"domain": "closed.example", "addresses": ["127.0.0.3"]},
    ]
    process = MilterProcess(folder / "milter", root, domains)
    process.start()
    try:
        yield process
    finally:
        process.stop()


def miltertest(script: str, milter: MilterProcess) -> str:
    """Run one script against the milter; fail with its output unless it passed."""
    assert MILTERTEST is not None
    command = [
        MILTERTEST,
        "-s",
        str(SCRIPTS / script),
        "-D",
        f"port={milter.port}",
        "-D",
        f"common={SCRIPTS / 'common.lua'}",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{script}: exit {done.returncode}\n{output}"
    assert output.splitlines()[-1:] == ["PASS"], output
    return output


@pytest.mark.parametrize(
    ("script", "log_lines"),
    [
        (
            "unknown_user.lua",
            [
                "MTUNKNOWN: milter to=<nobody@abc.example>, domain=abc.example, "
                "rule=unknown-user, status=rejected (550 5.1.1 User unknown)"
            ],
        ),
        (
            "known_user.lua",
            [
                "MTKNOWN: milter size=26, nrcpt=1, domain=abc.example, rule=message, "
                "status=accepted (X-Mdmail-Domain: none (rule: none, server address "
                "127.0.0.1))",
            ],
        ),
        (
            "bare_recipient.lua",
            [
                "MTBARE: milter size=26, nrcpt=1, domain=abc.example, rule=message, "
                "status=accepted (X-Mdmail-Domain: abc.example (rule: server-address "
                "127.0.0.2))",
            ],
        ),
        (
            "other_domain.lua",
            [
                "MTOTHER: milter to=<someone@elsewhere.test>, domain=closed.example, "
                "rule=other-domain, status=rejected (550 5.7.1 Relay access denied: "
                "this server address takes mail for closed.example only)",
                "MTOTHER: milter to=<alice@abc.example>, domain=closed.example, "
                "rule=other-domain, status=rejected (550 5.7.1 Relay access denied: "
                "this server address takes mail for closed.example only)",
            ],
        ),
        (
            "domain_header.lua",
            [
                "MTHEADER: milter size=107, nrcpt=1, domain=abc.example, "
                "rule=message, status=accepted (X-Mdmail-Domain: abc.example (rule: "
                "server-address 127.0.0.2))",
            ],
        ),
        (
            "size_limit.lua",
            [
                "MTSIZE: milter from=<sender@x.test>, domain=abc.example, "
                "rule=message-size, status=rejected (552 5.3.4 Message exceeds the "
                "maximum size of abc.example)",
                "MTSIZE: milter size=2968, nrcpt=1, domain=abc.example, "
                "rule=message-size, status=rejected (552 5.3.4 Message exceeds the "
                "maximum size of abc.example)",
            ],
        ),
    ],
)
def test_script(milter: MilterProcess, script: str, log_lines: list[str]) -> None:
    """Each script passes; the milter logged each refusal and each message's end."""
    miltertest(script, milter)
    queue_id = log_lines[0].split(":", 1)[0]
    logged = [
        line.split("]: ", 1)[1]
        for line in milter.log_text().splitlines()
        if f"]: {queue_id}: milter " in line
    ]
    assert logged == log_lines
