"""Benchmark: the whole path, SMTP into Postfix to the Maildirs, ours beside Dovecot.

One private Postfix (own config, queue and data folders, maillog_file, listening on
a free loopback port) relays eight test domains: ours.d1.test to ours.d4.test go by
transport_maps to our LMTP server (`mdmail --config CFG serve lmtp`), and
dovecot.d1.test to dovecot.d4.test to a private Dovecot LMTP. Both servers get the
same 200 accounts in their four domains and the same Maildir layout (bench/peers.py).
Which server a run measures is chosen by the domains smtp-source writes to, so
Postfix is never reconfigured or reloaded between runs.

Both routes use the same `lmtp` service of master.cf and the same settings, and
only one route carries mail at a time:
- default_process_limit = max(sessions, concurrency): smtpd, cleanup and lmtp may
  each run that many processes;
- lmtp_destination_concurrency_limit = lmtp_initial_destination_concurrency =
  --concurrency (20): all four domains of a server share one next hop, so that is
  the number of parallel LMTP sessions, reached at once instead of by slow start;
- connection caching, --connection-cache: "always" (default) puts 127.0.0.1, the
  host of both next hops, in lmtp_connection_cache_destinations, so an LMTP session
  is kept for the next message whatever the backlog; "demand" is Postfix's default
  (kept only while a backlog lasts, which depends on the server's own speed);
  "off" opens a new LMTP session for every delivery; an idle cached session is
  closed after lmtp_connection_cache_time_limit (2 s, the default), and every run
  waits until no LMTP session to its server is left open, so that no run inherits
  warm sessions from the one before (the same server runs twice in a row where
  the order flips);
- lmtp_send_xforward_command = yes as in postfix/main.cf.fragment (Dovecot does
  not offer XFORWARD, so only ours gets it); in_flow_delay left at its default.

The load: one `smtp-source -s 1` process per session (20), each to its own base
address, a new SMTP connection for every message; 1 and 10 KB bodies, 1 and 10
recipients (a 10-recipient cell sends a fifth of the messages). A run starts just
before the first client is started and ends when the last message is linked into
new/ (the folder's mtime, seen by polling every recipient's Maildir); then Postfix
must have logged status=sent for every recipient and `postqueue -p` must show an
empty queue, or the run is void. Rate = messages / that time. Maildirs are emptied
and `sync` is called between runs; the servers take turns, the order alternating,
and the ratio ours/Dovecot is taken pair by pair; the table shows medians.
Needs root: Dovecot delivers as nobody, and Postfix's tools need -c as root.
Run: .venv/bin/python bench/path_bench.py [--quick] [--repeat 3] [--json FILE]
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

from harness import command_block, progress, run_benchmark
from lmtp_load import KB, Cell, LoadError, SpentFolders, clear_maildirs
from lmtp_report import Report, RunFigure
from path_load import Route, routed, run_path, wait_no_sessions
from peers import (
    HOST,
    DovecotPeer,
    OursPeer,
    Peer,
    PeerError,
    all_mailboxes,
    stop_all,
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.mta import MtaError, PostfixInstance  # noqa: E402

SIZES = (1 * KB, 10 * KB)
RECIPIENTS = (1, 10)
TEN_RECIPIENT_SHARE = 5
WARM_UP = 5
CACHE_MODES = ("always", "demand", "off")
# lmtp_connection_cache_time_limit: how long an idle LMTP session is kept.
CACHE_SECONDS = 2
SESSION_CLOSE_SECONDS = 10


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run (< 1 min)")
    parser.add_argument(
        "--repeat", type=int, help="pairs per cell (default 3, quick 1)"
    )
    parser.add_argument(
        "--messages",
        type=int,
        help="messages per 1-recipient cell (default 2000, quick 200); "
        f"10-recipient cells send 1/{TEN_RECIPIENT_SHARE} of that",
    )
    parser.add_argument("--sessions", type=int, default=20, help="smtp-source clients")
    parser.add_argument("--concurrency", type=int, default=20, help="LMTP sessions")
    parser.add_argument(
        "--connection-cache",
        choices=CACHE_MODES,
        default="always",
        help="when Postfix keeps LMTP sessions for the next delivery",
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="our lmtp.workers (0: one per CPU)"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a run")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write figures")
    parser.add_argument("--workdir", type=Path, help="parent of the scratch folder")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--mdmail", default=str(REPO / ".venv" / "bin" / "mdmail"))
    parser.add_argument("--dovecot", default="/usr/sbin/dovecot")
    args = parser.parse_args()
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.messages = args.messages or (200 if args.quick else 2000)
    return args


def build_cells(messages: int, sessions: int) -> list[Cell]:
    """The four cells, each split evenly over the sessions."""
    cells = []
    for recipients in RECIPIENTS:
        total = messages if recipients == 1 else messages // TEN_RECIPIENT_SHARE
        for size in SIZES:
            cells.append(Cell(size, recipients, sessions, max(1, total // sessions)))
    return cells


def postfix_settings(args: argparse.Namespace) -> dict[str, str]:
    """main.cf lines that set Postfix's limits, the same for both routes."""
    # The cache list is matched against the next hop's bare host, without the port
    # (a colon would make the entry a lookup table), so one entry covers both.
    caching = {
        "always": ("yes", HOST),
        "demand": ("yes", ""),
        "off": ("no", ""),
    }[args.connection_cache]
    return {
        "default_process_limit": str(max(args.sessions, args.concurrency)),
        "lmtp_destination_concurrency_limit": str(args.concurrency),
        "lmtp_initial_destination_concurrency": str(args.concurrency),
        "lmtp_connection_cache_on_demand": caching[0],
        "lmtp_connection_cache_destinations": caching[1],
        "lmtp_connection_cache_time_limit": f"{CACHE_SECONDS}s",
    }


class Bench:
    """Postfix, the two LMTP servers behind it, and the runs made so far."""

    def __init__(self, args: argparse.Namespace, scratch: Path) -> None:
        self.args = args
        self.scratch = scratch
        self.spent = SpentFolders(scratch / "spent")
        self.cells = build_cells(args.messages, args.sessions)
        plain = all_mailboxes(args.sessions, max(RECIPIENTS))
        self.mailboxes = {
            name: [routed(mailbox, name) for mailbox in plain]
            for name in ("ours", "dovecot")
        }
        self.peers: list[Peer] = [
            OursPeer(
                scratch / "ours", self.mailboxes["ours"], args.mdmail, args.workers
            ),
            DovecotPeer(scratch / "dovecot", self.mailboxes["dovecot"], args.dovecot),
        ]
        self.postfix = self._make_postfix()
        self.route = Route(
            self.postfix.smtp_port, self.postfix.maillog, self.postfix.config_dir
        )
        self.report = Report([peer.name for peer in self.peers], self.cells)

    def _make_postfix(self) -> PostfixInstance:
        postfix = PostfixInstance(self.scratch / "postfix", myhostname="mx.bench.test")
        for peer in self.peers:
            for domain in sorted({m.domain for m in self.mailboxes[peer.name]}):
                postfix.transport[domain] = f"lmtp:inet:{HOST}:{peer.port}"
        postfix.extra_main_cf.update(postfix_settings(self.args))
        return postfix

    def run(self) -> int:
        """Start, measure, stop: 0, 1 if anything failed, 130 when interrupted."""
        status = 0
        try:
            self.start()
            self.run_matrix()
        except KeyboardInterrupt:
            self.report.stopped_by = "interrupted; the figures above are partial"
            status = 130
        except (PeerError, MtaError, LoadError, OSError) as error:
            self.report.stopped_by = str(error)
            status = 1
        finally:
            self.stop()
        if self.report.stopped_by:
            progress(f"stopped: {self.report.stopped_by}")
        return status or (1 if self.report.failures else 0)

    def start(self) -> None:
        """Start both servers, then Postfix; warm each route up, unrecorded."""
        for peer in self.peers:
            peer.start()
        self.postfix.start()
        warm_up = Cell(KB, 1, self.args.sessions, WARM_UP)
        for peer in self.peers:
            self.measure(warm_up, peer)

    def stop(self) -> None:
        """Postfix first, so that no delivery goes to a server that is stopping."""
        try:
            self.postfix.stop()
        except (MtaError, TimeoutError, OSError) as error:
            progress(f"stopping Postfix: {error}")
        stop_all(self.peers)

    def measure(self, cell: Cell, peer: Peer) -> float:
        """One run, then empty the Maildirs; messages per second."""
        if not peer.running():
            raise PeerError(f"{peer.name} is not running:\n{peer.log_tail()}")
        # Every run starts without cached LMTP sessions, whichever server ran last.
        wait_no_sessions(peer, CACHE_SECONDS + SESSION_CLOSE_SECONDS)
        try:
            figure = run_path(cell, peer, self.route, self.scratch, self.args.timeout)
        finally:
            clear_maildirs(peer, self.mailboxes[peer.name], self.spent)
        share = figure.reused / figure.deliveries
        progress(
            f"  {peer.name}: {figure.seconds:.2f} s, {share:.0%} of deliveries over "
            f"a reused LMTP session, {figure.warnings} Postfix warnings"
        )
        return cell.messages / figure.seconds

    def run_matrix(self) -> None:
        """Every cell, every repetition, the servers taking turns."""
        for repetition in range(self.args.repeat):
            for index, cell in enumerate(self.cells):
                turn = self.peers if (index + repetition) % 2 == 0 else self.peers[::-1]
                rates = {peer.name: self._try(cell, peer) for peer in turn}
                figure = RunFigure(repetition, cell, rates)
                self.report.runs.append(figure)
                progress(f"run {repetition + 1}/{self.args.repeat}: {figure.line()}")

    def _try(self, cell: Cell, peer: Peer) -> float | None:
        try:
            return self.measure(cell, peer)
        except LoadError as error:
            progress(f"FAILED {cell.label} {peer.name}: {error}")
            self.report.failures += 1
            return None


def version(command: list[str]) -> str:
    """The first line a version command prints, or '?'."""
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    return (done.stdout.strip().splitlines() or ["?"])[0]


def header(args: argparse.Namespace, started: str) -> list[str]:
    """The command, the machine and Postfix's settings, to print above the table."""
    postfix = version(["postconf", "-d", "-h", "mail_version"])
    dovecot = version([args.dovecot, "--version"])
    settings = postfix_settings(args)
    shown = ", ".join(f"`{name} = {value}`" for name, value in settings.items())
    return [
        *command_block(),
        f"Started {started}, {os.cpu_count()} CPUs, Postfix {postfix}, "
        f"Dovecot {dovecot}; {args.repeat} pairs per cell, {args.sessions} "
        f"smtp-source sessions (a connection per message), each run's Maildir "
        f"folders set aside after it; main.cf: {shown}.",
        "",
    ]


def main() -> int:
    """Run the benchmark; exit 1 if any run failed, 130 when interrupted."""
    args = parse_args()
    return run_benchmark(
        "path-bench-",
        args.workdir,
        args.keep,
        lambda scratch: Bench(args, scratch),
        lambda started: header(args, started),
        args.json,
    )


if __name__ == "__main__":
    sys.exit(main())
