"""Benchmark: our POP3 proxy side by side with Dovecot's POP3, in one run.

Both servers get the same accounts, the same password hashes and copies of the
same Maildirs. Each item is measured on both servers in turns whose order
alternates, and the ratio ours/Dovecot is taken within each repetition:
(a) logins per second: parallel worker processes loop connect, USER, PASS,
QUIT, one account each, per password scheme; (b) UIDL then LIST on a large
maildrop after login (median of pairs), and the login into it; (c) RETR of
every message, pipelined, small messages and 1 MB ones (MB/s on the wire);
(d) memory per idle logged-in session: both servers restarted, then N sessions
held open, the change of the process tree's PSS and RSS divided by N.
Run: .venv/bin/python bench/pop3_bench.py [--quick] [--repeat 5] [--json FILE]
"""

import argparse
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from harness import command_block, progress, run_benchmark
from peers import PeerError, stop_all
from pop3_load import (
    Pop3Error,
    close_sessions,
    measure_listing,
    measure_logins,
    measure_retrieval,
    open_sessions,
    warm_pool,
)
from pop3_peers import (
    PASSWORD,
    Account,
    DovecotPop3,
    MessageMaker,
    OursPop3,
    accounts_named,
    stored_hash,
)
from pop3_report import Item, Report
from proc_memory import sample_tree

REPO = Path(__file__).resolve().parent.parent
KB = 1024
SMALL_MESSAGES = 10
LISTING_PAIRS = 5
LOGIN_LIMIT = 100_000
# Time for the sessions just opened (or closed) to settle before a sample.
SETTLE_SECONDS = 1.0

LISTING = Item("UIDL+LIST after login, large maildrop", "ms", False)
LISTING_LOGIN = Item("USER/PASS/STAT into the large maildrop", "ms", False)
RETR_SMALL = Item("RETR all, pipelined, large maildrop", "MB/s", True)
RETR_BIG = Item("RETR all, pipelined, 1 MB messages", "MB/s", True)
PSS = Item("memory per idle session, PSS", "KB", False)
RSS = Item("memory per idle session, RSS", "KB", False)

Peer = OursPop3 | DovecotPop3
Step = Callable[[Peer], dict[Item, float]]


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run (< 1 min)")
    parser.add_argument("--repeat", type=int, help="repetitions (default 5, quick 1)")
    parser.add_argument("--messages", type=int, help="large maildrop (10000; 2000)")
    parser.add_argument("--big-messages", type=int, help="1 MB messages (40; 10)")
    parser.add_argument("--clients", type=int, default=4, help="login workers")
    parser.add_argument("--seconds", type=float, help="per login run (4; 1)")
    parser.add_argument("--sessions", type=int, default=200, help="idle sessions")
    parser.add_argument("--schemes", help="BLF-CRYPT,SHA512-CRYPT,PLAIN (quick: 1+3)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write figures")
    parser.add_argument("--workdir", type=Path, help="parent of the scratch folder")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--mdmail", default=str(REPO / ".venv" / "bin" / "mdmail"))
    parser.add_argument("--dovecot", default="/usr/sbin/dovecot")
    args = parser.parse_args()
    quick = args.quick
    args.repeat = args.repeat or (1 if quick else 5)
    args.messages = args.messages or (2000 if quick else 10_000)
    args.big_messages = args.big_messages or (10 if quick else 40)
    args.seconds = args.seconds or (1.0 if quick else 4.0)
    schemes = "BLF-CRYPT,PLAIN" if quick else "BLF-CRYPT,SHA512-CRYPT,PLAIN"
    args.schemes = (args.schemes or schemes).split(",")
    return args


def login_item(scheme: str) -> Item:
    """The logins-per-second item of one password scheme."""
    return Item(f"logins, {{{scheme}}}", "logins/s", True)


class Accounts:
    """Every account of the run, by the item that uses it."""

    def __init__(self, args: argparse.Namespace) -> None:
        """Login workers per scheme; the large and 1 MB maildrops; idle sessions."""
        small = tuple(2 * KB + 500 * index for index in range(SMALL_MESSAGES))
        self.logins = {
            scheme: list(
                accounts_named(_tag(scheme), args.clients, stored_hash(scheme), small)
            )
            for scheme in args.schemes
        }
        first = stored_hash(args.schemes[0])
        # Sizes spread over 0.5-10.5 KB, the same on every run.
        sizes = tuple(512 + index * 7919 % (10 * KB) for index in range(args.messages))
        self.large = next(accounts_named("many", 1, first, sizes))
        big = (KB * KB,) * args.big_messages
        self.big = next(accounts_named("big", 1, first, big))
        self.idle = list(accounts_named("idle", args.sessions, first, small))

    def all(self) -> list[Account]:
        """Every account, once."""
        logins = [account for group in self.logins.values() for account in group]
        return [*logins, self.large, self.big, *self.idle]


def _tag(scheme: str) -> str:
    return "login-" + scheme.lower().replace("-", "") + "-"


class Bench:
    """The two servers, their accounts, and the figures so far."""

    def __init__(self, args: argparse.Namespace, scratch: Path) -> None:
        """Nothing starts until run()."""
        self.args = args
        self.accounts = Accounts(args)
        every = self.accounts.all()
        self.ours = OursPop3(scratch / "ours", every, args.mdmail)
        self.dovecot = DovecotPop3(scratch / "dovecot", every, args.dovecot)
        self.peers: list[Peer] = [self.ours, self.dovecot]
        logins = [login_item(scheme) for scheme in args.schemes]
        items = [LISTING, LISTING_LOGIN, RETR_SMALL, RETR_BIG, PSS, RSS]
        self.report = Report(logins + items)
        context = multiprocessing.get_context("fork")
        self.pool = ProcessPoolExecutor(args.clients, mp_context=context)

    def run(self) -> int:
        """Set up, measure, stop: 0, 1 if anything failed, 130 when interrupted."""
        status = 0
        try:
            warm_pool(self.pool, self.args.clients)
            self.set_up()
            for repetition in range(self.args.repeat):
                self.repetition(repetition)
        except KeyboardInterrupt:
            self.report.stopped_by = "interrupted; the figures above are partial"
            status = 130
        except (PeerError, Pop3Error, OSError) as error:
            self.report.stopped_by = f"{type(error).__name__}: {error}"
            status = 1
        finally:
            stop_all(self.peers)
            self.pool.shutdown(cancel_futures=True)
        if self.report.stopped_by:
            progress(f"stopped: {self.report.stopped_by}")
        return status or (1 if self.report.failures else 0)

    def set_up(self) -> None:
        """Fill the Maildirs, start both, and touch every account once."""
        started = time.monotonic()
        self.ours.prepare(MessageMaker())
        self.dovecot.prepare(self.ours)
        os.sync()
        progress(f"Maildirs ready after {time.monotonic() - started:.1f} s")
        logins = [account.login for account in self.accounts.all()]
        for peer in self.peers:
            peer.start()
            # Dovecot builds its index files at the first login to a Maildir.
            close_sessions(open_sessions(peer.port, logins, PASSWORD))
            self._retrieve_large(peer)
            self._retrieve_big(peer)
        progress(f"servers warm after {time.monotonic() - started:.1f} s")

    def repetition(self, repetition: int) -> None:
        """Every item once on each server, the order alternating; memory last."""
        steps: list[Step] = [self._login_step(scheme) for scheme in self.args.schemes]
        steps += [self._listing, self._retrieve_large, self._retrieve_big]
        for index, step in enumerate(steps):
            for peer in self._turn(index + repetition):
                self._record(repetition, peer, step)
        for peer in self._turn(repetition):
            self._record(repetition, peer, self._memory)
        progress(f"repetition {repetition + 1}/{self.args.repeat} done")

    def _turn(self, index: int) -> list[Peer]:
        return self.peers if index % 2 == 0 else self.peers[::-1]

    def _record(self, repetition: int, peer: Peer, step: Step) -> None:
        try:
            figures = step(peer)
        except (Pop3Error, OSError, TimeoutError) as error:
            name = getattr(step, "__name__", "step").lstrip("_")
            progress(f"FAILED {name} on {peer.name}: {error}")
            self.report.failures += 1
            return
        for item, value in figures.items():
            self.report.add(repetition, item, peer.name, value)
            progress(f"  {item.name}, {peer.name}: {value:,.2f} {item.unit}")

    # The steps: each measures one server and returns its figures.

    def _login_step(self, scheme: str) -> Step:
        users = [account.login for account in self.accounts.logins[scheme]]
        item = login_item(scheme)

        def logins(peer: Peer) -> dict[Item, float]:
            figure = measure_logins(
                self.pool, peer.port, users, PASSWORD, self.args.seconds, LOGIN_LIMIT
            )
            if figure.failed:
                raise Pop3Error(f"{figure.failed} of the logins failed")
            return {item: figure.rate}

        return logins

    def _listing(self, peer: Peer) -> dict[Item, float]:
        large = self.accounts.large
        figure = measure_listing(
            peer.port, large.login, PASSWORD, len(large.sizes), LISTING_PAIRS
        )
        return {LISTING: figure.pair * 1000, LISTING_LOGIN: figure.login * 1000}

    def _retrieve_large(self, peer: Peer) -> dict[Item, float]:
        large = self.accounts.large
        figure = measure_retrieval(peer.port, large.login, PASSWORD, len(large.sizes))
        return {RETR_SMALL: figure.mb_per_second}

    def _retrieve_big(self, peer: Peer) -> dict[Item, float]:
        big = self.accounts.big
        figure = measure_retrieval(peer.port, big.login, PASSWORD, len(big.sizes))
        return {RETR_BIG: figure.mb_per_second}

    def _memory(self, peer: Peer) -> dict[Item, float]:
        """Restart, log in once, sample; open N idle sessions, sample again."""
        users = [account.login for account in self.accounts.idle]
        peer.restart()
        close_sessions(open_sessions(peer.port, users[:1], PASSWORD))
        time.sleep(SETTLE_SECONDS)
        before = sample_tree(peer.root_pid())
        sessions = open_sessions(peer.port, users, PASSWORD)
        try:
            time.sleep(SETTLE_SECONDS)
            after = sample_tree(peer.root_pid())
        finally:
            close_sessions(sessions)
        count = len(sessions)
        return {
            PSS: (after.pss_kb - before.pss_kb) / count,
            RSS: (after.rss_kb - before.rss_kb) / count,
        }


def header(args: argparse.Namespace, started: str) -> list[str]:
    """The command and the set-up, to print above the table."""
    dovecot = subprocess.run(
        [args.dovecot, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return [
        *command_block(),
        f"Started {started}, {os.cpu_count()} CPUs, Dovecot {dovecot or '?'} "
        "(pop3-login service_count = 0), "
        f"{args.repeat} repetition(s); medians, ratios taken per repetition. "
        f"Logins: {args.clients} worker processes x {args.seconds:g} s. "
        f"Large maildrop: {args.messages} messages of 0.5-10.5 KB; "
        f"{args.big_messages} messages of 1 MB; {args.sessions} idle sessions.",
        "",
    ]


def main() -> int:
    """Run the benchmark; exit 1 if any run failed, 130 when interrupted."""
    args = parse_args()
    return run_benchmark(
        "pop3-bench-",
        args.workdir,
        args.keep,
        lambda scratch: Bench(args, scratch),
        lambda started: header(args, started),
        args.json,
    )


if __name__ == "__main__":
    sys.exit(main())
