"""Benchmark: our LMTP server side by side with Dovecot's LMTP, in one run.

Postfix's smtp-source (-L, one process per session, -d to keep the connection)
loads both servers with the same cells: 1, 10 and 100 KB messages, 1 and 10
recipients, 1 and 20 sessions. The servers take turns cell by cell (the order
alternates), every run is checked against the Maildirs, and the ratio ours/Dovecot
is taken run by run; the table shows medians. Then the peak memory of each server's
process tree while 20 sessions each deliver one 50 MB message. Each run also
charges the CPU time the server's process tree spent in it to its messages.
Run: .venv/bin/python bench/lmtp_bench.py [--quick] [--repeat 3] [--json FILE]
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

from harness import command_block, progress, run_benchmark
from lmtp_load import (
    KB,
    Cell,
    LoadError,
    SpentFolders,
    clear_maildirs,
    run_load,
    verify_stored,
)
from lmtp_report import Report, RssFigure, RunFigure
from peers import (
    DovecotPeer,
    OursPeer,
    Peer,
    PeerError,
    all_mailboxes,
    stop_all,
)
from proc_cpu import tree_cpu_seconds
from proc_memory import PeakSampler

REPO = Path(__file__).resolve().parent.parent
SIZES = (1 * KB, 10 * KB, 100 * KB)
RECIPIENTS = (1, 10)
SESSIONS = (1, 20)
# A ten-recipient message makes ten deliveries: send fewer of them.
TEN_RECIPIENT_SHARE = 5


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run (< 1 min)")
    parser.add_argument("--repeat", type=int, help="runs per cell (default 3, quick 1)")
    parser.add_argument(
        "--messages",
        type=int,
        help="messages per 1-recipient cell (default 1000, quick 100); "
        f"10-recipient cells send 1/{TEN_RECIPIENT_SHARE} of that",
    )
    parser.add_argument("--only", choices=("ours", "dovecot"), help="one server")
    parser.add_argument(
        "--workers", type=int, default=0, help="our lmtp.workers (0: one per CPU)"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a run")
    parser.add_argument("--rss-mb", type=int, help="message size of the memory run")
    parser.add_argument("--rss-sessions", type=int, default=20)
    parser.add_argument("--no-rss", action="store_true", help="skip the memory run")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write figures")
    parser.add_argument("--workdir", type=Path, help="parent of the scratch folder")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--mdmail", default=str(REPO / ".venv" / "bin" / "mdmail"))
    parser.add_argument("--dovecot", default="/usr/sbin/dovecot")
    args = parser.parse_args()
    quick = args.quick
    args.repeat = args.repeat or (1 if quick else 3)
    args.messages = args.messages or (100 if quick else 1000)
    args.rss_mb = args.rss_mb or (5 if quick else 50)
    return args


def build_cells(messages: int) -> list[Cell]:
    """The twelve cells, each sending about the same work to every session."""
    cells = []
    for size in SIZES:
        for recipients in RECIPIENTS:
            total = messages if recipients == 1 else messages // TEN_RECIPIENT_SHARE
            for sessions in SESSIONS:
                per_session = max(1, total // sessions)
                cells.append(Cell(size, recipients, sessions, per_session))
    return cells


class Measured(NamedTuple):
    """One run of one server: messages per second, CPU milliseconds a message."""

    rate: float
    cpu_ms: float


class Bench:
    """The peers, their scratch folders, and the runs made so far."""

    def __init__(self, args: argparse.Namespace, scratch: Path) -> None:
        self.args = args
        self.scratch = scratch
        self.spent = SpentFolders(scratch / "spent")
        self.cells = build_cells(args.messages)
        self.mailboxes = all_mailboxes(max(*SESSIONS, args.rss_sessions), 10)
        self.peers = self._make_peers()
        self.report = Report([peer.name for peer in self.peers], self.cells)

    def _make_peers(self) -> list[Peer]:
        peers: list[Peer] = []
        if self.args.only != "dovecot":
            peers.append(
                OursPeer(
                    self.scratch / "ours",
                    self.mailboxes,
                    self.args.mdmail,
                    self.args.workers,
                )
            )
        if self.args.only != "ours":
            base = self.scratch / "dovecot"
            peers.append(DovecotPeer(base, self.mailboxes, self.args.dovecot))
        return peers

    def run(self) -> int:
        """Start, measure, stop: 0, 1 if anything failed, 130 when interrupted."""
        status = 0
        try:
            self.start()
            self.run_matrix()
            if not self.args.no_rss:
                self.run_memory()
        except KeyboardInterrupt:
            self.report.stopped_by = "interrupted; the figures above are partial"
            status = 130
        except (PeerError, LoadError, OSError) as error:
            self.report.stopped_by = str(error)
            status = 1
        finally:
            stop_all(self.peers)
        if self.report.stopped_by:
            progress(f"stopped: {self.report.stopped_by}")
        return status or (1 if self.report.failures else 0)

    def start(self) -> None:
        """Start every peer and warm it up with one small unrecorded run."""
        warmup = Cell(KB, 10, max(SESSIONS), 2)
        for peer in self.peers:
            peer.start()
            self.measure(warmup, peer)

    def measure(self, cell: Cell, peer: Peer) -> Measured:
        """One run: load, check the Maildirs, empty them; its rate and CPU cost."""
        if not peer.running():
            raise PeerError(f"{peer.name} is not running:\n{peer.log_tail()}")
        try:
            cpu_before = tree_cpu_seconds(peer.root_pid())
            seconds = run_load(cell, peer, self.scratch, self.args.timeout)
            cpu = tree_cpu_seconds(peer.root_pid()) - cpu_before
            verify_stored(cell, peer)
        finally:
            clear_maildirs(peer, self.mailboxes, self.spent)
        return Measured(cell.messages / seconds, cpu * 1000 / cell.messages)

    def run_matrix(self) -> None:
        """Every cell, every repetition, the peers taking turns."""
        for repetition in range(self.args.repeat):
            for index, cell in enumerate(self.cells):
                turn = self.peers if (index + repetition) % 2 == 0 else self.peers[::-1]
                measured = {peer.name: self._try(cell, peer) for peer in turn}
                figure = RunFigure(
                    repetition,
                    cell,
                    {name: run and run.rate for name, run in measured.items()},
                    {name: run and run.cpu_ms for name, run in measured.items()},
                )
                self.report.runs.append(figure)
                progress(f"run {repetition + 1}/{self.args.repeat}: {figure.line()}")

    def _try(self, cell: Cell, peer: Peer) -> Measured | None:
        try:
            return self.measure(cell, peer)
        except LoadError as error:
            progress(f"FAILED {cell.label} {peer.name}: {error}")
            self.report.failures += 1
            return None

    def run_memory(self) -> None:
        """Peak memory of each server under large messages, 1 recipient."""
        size = self.args.rss_mb * KB * KB
        cell = Cell(size, 1, self.args.rss_sessions, 1)
        for peer in self.peers:
            with PeakSampler(peer.root_pid()) as sampler:
                started = time.monotonic()
                measured = self._try(cell, peer)
            seconds = time.monotonic() - started
            ok = measured is not None
            figure = RssFigure(peer.name, cell, sampler.idle, sampler.peak, seconds, ok)
            self.report.rss.append(figure)
            progress(figure.line())


def header(args: argparse.Namespace, started: str) -> list[str]:
    """The command and the machine, to print above the figures."""
    dovecot = subprocess.run(
        [args.dovecot, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return [
        *command_block(),
        f"Started {started}, {os.cpu_count()} CPUs, "
        f"Dovecot {dovecot or '?'}, {args.repeat} runs per cell, "
        f"{args.messages} messages per 1-recipient cell, "
        "each run's Maildir folders set aside after it.",
        "",
    ]


def main() -> int:
    """Run the benchmark; exit 1 if any run failed, 130 when interrupted."""
    args = parse_args()
    return run_benchmark(
        "lmtp-bench-",
        args.workdir,
        args.keep,
        lambda scratch: Bench(args, scratch),
        lambda started: header(args, started),
        args.json,
    )


if __name__ == "__main__":
    sys.exit(main())
