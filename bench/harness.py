"""What the side-by-side benchmarks share: the command line, progress, the run.

Each benchmark builds its servers in a scratch folder of its own, runs, and
prints the command (to paste into RESULTS.md), its set-up line and its table;
`run_benchmark` is that sequence once, with the folder removed afterwards
(kept with --keep) and SIGTERM handled as Ctrl-C, so the servers are stopped.
"""

import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, Protocol


class Figures(Protocol):
    """A benchmark's report: the Markdown table and the figures for --json."""

    def markdown(self) -> list[str]:
        """The table, line by line."""
        ...

    def data(self, command: str) -> dict[str, Any]:
        """Every figure, with the command that made them."""
        ...


class Benchmark(Protocol):
    """A benchmark ready to run in its scratch folder."""

    @property
    def report(self) -> Figures:
        """The figures measured so far."""
        ...

    def run(self) -> int:
        """Measure; 0, 1 if any run failed, 130 when interrupted."""
        ...


def command_line() -> str:
    """The command as typed from the repository, to paste into RESULTS.md."""
    python = os.path.relpath(sys.executable, os.getcwd())
    return shlex.join([python, *sys.argv])


def command_block() -> list[str]:
    """The command as a Markdown code block, the first lines of a report."""
    return ["Command:", "", "```sh", command_line(), "```", ""]


def progress(text: str) -> None:
    """A line of progress on stderr (the report goes to stdout)."""
    print(text, file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_benchmark(
    prefix: str,
    workdir: Path | None,
    keep: bool,
    build: Callable[[Path], Benchmark],
    header: Callable[[str], list[str]],
    json_file: Path | None = None,
) -> int:
    """Build the benchmark in a scratch folder, run it, print and save its figures."""
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.strftime("%Y-%m-%d %H:%M")
    progress(f"command: {command_line()}")
    scratch = Path(tempfile.mkdtemp(prefix=prefix, dir=workdir))
    # Dovecot delivers and reads as nobody, who must be able to reach the Maildirs.
    scratch.chmod(0o755)
    try:
        bench = build(scratch)
        status = bench.run()
    finally:
        if keep:
            progress(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print("\n".join(header(started) + bench.report.markdown()))
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(json.dumps(bench.report.data(command_line()), indent=2))
    return status


class LogTail:
    """The whole lines a growing log file got since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> bytes:
        """New whole lines; a line still being written is read next time."""
        if not self.path.exists():
            return b""
        with self.path.open("rb") as log:
            log.seek(self.offset)
            chunk = log.read()
        whole = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(whole)
        return whole
