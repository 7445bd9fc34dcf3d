"""The log set-up: one line per event in the server log and the domain's own log."""

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from mdcore.admin import Admin
from mdcore.layout import StateRoot
from mdcore.logs import batched_lines, for_domain, setup_logging

log = logging.getLogger("mdmail.test")


@pytest.fixture
def logged(tmp_path: Path, admin: Admin, root: StateRoot) -> Iterator[Path]:
    """Logging to tmp_path/server.log and the domain logs, undone afterwards."""
    admin.add_domain("abc.example")
    server_log = tmp_path / "server.log"
    setup_logging("lmtpd", "INFO", str(server_log), root)
    yield server_log
    for handler in list(logging.getLogger().handlers):
        logging.getLogger().removeHandler(handler)
        handler.close()


def _lines(path: Path) -> list[str]:
    return [line.split(": ", 1)[1] for line in path.read_text().splitlines()]


def test_a_line_reaches_both_logs_at_once(logged: Path, root: StateRoot) -> None:
    """Outside a batch each line is on disk when the call returns, formatted once."""
    domain_log = root.tree("abc.example").logs / "mail.log"
    log.info("to=<foo@abc.example> status=sent", extra=for_domain("abc.example"))
    log.info("no domain here")

    assert _lines(logged) == ["to=<foo@abc.example> status=sent", "no domain here"]
    assert _lines(domain_log) == ["to=<foo@abc.example> status=sent"]
    assert logged.read_text().splitlines()[0].split(": ")[0].startswith("20")


def test_a_batch_writes_its_lines_when_it_ends(logged: Path, root: StateRoot) -> None:
    """Within a batch (nested too) lines wait in the buffer; all are there after."""
    domain_log = root.tree("abc.example").logs / "mail.log"
    with batched_lines():
        for number in range(3):
            log.info("line %d", number, extra=for_domain("abc.example"))
        with batched_lines():
            log.info("inner", extra=for_domain("abc.example"))
        assert logged.read_text() == ""
        assert domain_log.read_text() == ""

    expected = ["line 0", "line 1", "line 2", "inner"]
    assert _lines(logged) == expected
    assert _lines(domain_log) == expected


def test_a_batch_that_raises_still_writes(logged: Path) -> None:
    """The lines logged before an error are written when the error leaves."""
    with pytest.raises(RuntimeError), batched_lines():
        log.info("before the error")
        raise RuntimeError("boom")
    assert _lines(logged) == ["before the error"]
