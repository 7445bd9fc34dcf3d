"""Benchmark: messages per second through Postfix with and without our milter.

One private Postfix with two smtpd listeners on 127.0.0.1, one asking the milter and
one not (-o smtpd_milters=), relaying bench.example over LMTP to smtp-sink, which
stores nothing, so the MTA and the milter are what is measured. smtp-source sends
the same load to each listener in turn (20 sessions, a new connection per message,
as most inbound mail comes), the order alternating from one repetition to the next;
the ratio with/without is taken pair by pair and the table shows medians.
"accepted" is the SMTP side (smtp-source's wall time), "delivered" runs until
Postfix has logged status=sent for every message. Postfix gets the milter settings
`mdmail mta postfix --milter` writes, over TCP as the default milter.socket, except
the milter time limits, left at Postfix's defaults: they change no rate.

--ceiling adds a third listener whose milter does nothing: bench/null_milter.c,
compiled with cc against libmilter into the scratch folder, negotiating the steps,
macros and the one added header field ours does, and answering "continue" to all.
It runs in every repetition, next to the run without milter, and the tables add its
ratio null/without, run by run: the rate no milter can beat, so what is left between
that and 1 is Postfix's and libmilter's own cost per message. Without cc or
libmilter-dev the bench says so and measures the other two.
Run: .venv/bin/python bench/milter_bench.py [--messages 2000] [--repeat 3] [--ceiling]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness import LogTail, command_line, progress

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mdcore.admin import Admin  # noqa: E402
from mdcore.layout import StateRoot  # noqa: E402
from tests.conftest import SECRET_HASH  # noqa: E402
from tests.milter_process import MilterProcess  # noqa: E402
from tests.mta import (  # noqa: E402
    PostfixInstance,
    free_port,
    is_listening,
    wait_until,
)

DOMAIN = "bench.example"
RECIPIENT = f"alice@{DOMAIN}"
SENDER = "sender@x.test"
# A quota makes every RCPT read the mailbox's maildirsize, as it would in use.
QUOTA_BYTES = 10 * 1024**3
WARM_UP_MESSAGES = 100
WITH, WITHOUT, NULL = "with milter", "without milter", "null milter"
# The listeners as named in the ratios.
RATIO_NAMES = {WITH: "with", WITHOUT: "without", NULL: "null"}
# Limitation: null_milter.c repeats our negotiation (steps, macros, the added
# header field) by hand; a change to it in milter/mdmilter/filter.py must be made
# there too, or the ceiling measures other protocol traffic than ours.
NULL_SOURCE = REPO / "bench" / "null_milter.c"
NULL_START_TIMEOUT = 10.0


@dataclass(frozen=True)
class Figure:
    """One run: messages per second accepted over SMTP and delivered to the sink."""

    accepted: float
    delivered: float


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=2000, help="per run")
    parser.add_argument("--sessions", type=int, default=20, help="smtp-source -s")
    parser.add_argument("--size", type=int, default=1024, help="body octets (-l)")
    parser.add_argument("--repeat", type=int, default=3, help="pairs of runs")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a run")
    parser.add_argument(
        "--log-level", default="INFO", help="the milter's (INFO: a line per decision)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help=f"also measure a do-nothing C milter ({NULL_SOURCE.name})",
    )
    return parser.parse_args()


class SentCounter:
    """Counts Postfix's status=sent lines, reading only what was added since."""

    def __init__(self, maillog: Path) -> None:
        self.tail = LogTail(maillog)
        self.sent = 0

    def count(self) -> int:
        """Deliveries logged so far."""
        self.sent += self.tail.read().count(b" status=sent ")
        return self.sent


class NullMilterUnavailable(Exception):
    """The null milter cannot be built here; the message says why."""


def build_null_milter(folder: Path) -> Path:
    """Compile bench/null_milter.c into `folder`; return the program."""
    compiler = shutil.which("cc")
    if compiler is None:
        raise NullMilterUnavailable("no C compiler (cc): install gcc and libmilter-dev")
    program = folder / "null_milter"
    command = [compiler, "-O2", "-o", str(program), str(NULL_SOURCE)]
    done = subprocess.run(
        [*command, "-lmilter", "-pthread"], capture_output=True, text=True
    )
    if done.returncode != 0:
        lines = done.stderr.splitlines() or [f"cc exited with {done.returncode}"]
        detail = next((line for line in lines if "error" in line), lines[0])
        raise NullMilterUnavailable(
            f"cannot compile {NULL_SOURCE.name} (is libmilter-dev installed?): {detail}"
        )
    return program


class NullMilter:
    """The compiled null milter on a free loopback port."""

    def __init__(self, program: Path, folder: Path) -> None:
        self.program = program
        self.log_path = folder / "null-milter.log"
        port = free_port()
        self.port = port
        self.spec = f"inet:{port}@127.0.0.1"
        self.postfix_spec = f"inet:127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it; return once it listens, or raise with what it said."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.program), self.spec], stdout=subprocess.DEVNULL, stderr=log
            )
        process = self.process

        def up_or_gone() -> bool:
            return is_listening("127.0.0.1", self.port) or process.poll() is not None

        wait_until(up_or_gone, NULL_START_TIMEOUT, "the null milter")
        if process.poll() is not None:
            said = self.log_path.read_text().strip()
            raise RuntimeError(f"null milter exited at start: {said}")

    def stop(self) -> None:
        """SIGKILL: it holds nothing, and libmilter takes seconds over SIGTERM."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process `pid` has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Bench:
    """The milter(s), smtp-sink and Postfix in a scratch folder."""

    def __init__(
        self, args: argparse.Namespace, scratch: Path, null_program: Path | None
    ) -> None:
        self.args = args
        root = StateRoot(scratch / "state")
        admin = Admin(root)
        admin.add_domain(DOMAIN)
        admin.add_account(
            DOMAIN, "alice", SECRET_HASH, hashed=True, quota_bytes=QUOTA_BYTES
        )
        bindings = [{"domain": DOMAIN, "addresses": ["127.0.0.1"]}]
        self.milter = MilterProcess(
            scratch / "milter", root, bindings, log_level=args.log_level
        )
        self.sink_port = free_port()
        self.sink: subprocess.Popen[bytes] | None = None
        self.postfix = PostfixInstance(scratch / "postfix")
        self.postfix.transport[DOMAIN] = f"lmtp:inet:127.0.0.1:{self.sink_port}"
        self.postfix.smtpd_milters = self.milter.postfix_spec
        plain = self.postfix.add_listener("127.0.0.1", options={"smtpd_milters": ""})
        self.ports = {WITH: self.postfix.smtp_port, WITHOUT: plain}
        self.null: NullMilter | None = None
        if null_program is not None:
            self.null = NullMilter(null_program, scratch)
            self.ports[NULL] = self.postfix.add_listener(
                "127.0.0.1", options={"smtpd_milters": self.null.postfix_spec}
            )
        self.counter = SentCounter(self.postfix.maillog)

    @property
    def listeners(self) -> tuple[str, ...]:
        """The listeners in the order of a repetition, "without" between the others.

        Each ratio then compares two adjacent runs, and reversing the order from one
        repetition to the next gives every listener the same mean position.
        """
        return (WITH, WITHOUT, NULL) if self.null is not None else (WITH, WITHOUT)

    def start(self) -> None:
        """Start the milter(s), the sink and Postfix, each once it can be reached."""
        self.milter.start()
        if self.null is not None:
            self.null.start()
        sink = ["smtp-sink", "-L", "-u", "nobody", f"127.0.0.1:{self.sink_port}", "256"]
        self.sink = subprocess.Popen(sink, stdout=subprocess.DEVNULL)
        self.postfix.start()

    def stop(self) -> None:
        """Stop them all (our milter with SIGTERM, as systemd would)."""
        self.postfix.stop()
        if self.sink is not None:
            self.sink.terminate()
            self.sink.wait()
        if self.null is not None:
            self.null.stop()
        self.milter.stop()

    def run(self, listener: str, messages: int) -> Figure:
        """Send `messages` to one listener; wait until all are delivered."""
        expected = self.counter.count() + messages
        source = [
            "smtp-source", "-s", str(self.args.sessions), "-m", str(messages),
            "-l", str(self.args.size), "-M", "client.test", "-f", SENDER,
            "-t", RECIPIENT, f"127.0.0.1:{self.ports[listener]}",
        ]  # fmt: skip
        started = time.monotonic()
        done = subprocess.run(
            source, capture_output=True, text=True, timeout=self.args.timeout
        )
        accepted = time.monotonic() - started
        if done.returncode != 0:
            raise RuntimeError(f"smtp-source failed: {done.stdout}{done.stderr}")
        remaining = self.args.timeout - accepted
        wait_until(lambda: self.counter.count() >= expected, remaining, "deliveries")
        delivered = time.monotonic() - started
        return Figure(messages / accepted, messages / delivered)

    def milter_process(self, listener: str) -> subprocess.Popen[bytes] | None:
        """The process of the milter behind `listener`, if it has one."""
        if listener == WITH:
            return self.milter.process
        if listener == NULL and self.null is not None:
            return self.null.process
        return None


@dataclass(frozen=True)
class Measurement:
    """Every run's figures per listener, and each milter's CPU time over them."""

    figures: dict[str, list[Figure]]
    cpu_seconds: dict[str, float]
    messages: int

    def cpu_per_message(self, listener: str) -> float:
        """Seconds of the listener's milter CPU time per message it was sent."""
        return self.cpu_seconds[listener] / self.messages


def measure(bench: Bench, args: argparse.Namespace) -> Measurement:
    """Warm up, then `repeat` rounds in alternating order, with each milter's CPU."""
    for listener in bench.listeners:
        bench.run(listener, WARM_UP_MESSAGES)
    figures: dict[str, list[Figure]] = {name: [] for name in bench.listeners}
    cpu = dict.fromkeys(bench.listeners, 0.0)
    for turn in range(args.repeat):
        order = bench.listeners if turn % 2 == 0 else bench.listeners[::-1]
        for listener in order:
            process = bench.milter_process(listener)
            before = cpu_seconds(process.pid) if process is not None else 0.0
            figure = bench.run(listener, args.messages)
            if process is not None:
                cpu[listener] += cpu_seconds(process.pid) - before
            figures[listener].append(figure)
            progress(
                f"run {turn + 1} {listener}: accepted {figure.accepted:.0f}/s, "
                f"delivered {figure.delivered:.0f}/s"
            )
    return Measurement(figures, cpu, args.repeat * args.messages)


def ratios(
    figures: dict[str, list[Figure]], over: str, under: str
) -> tuple[list[float], list[float]]:
    """Run by run, `over`'s rate divided by `under`'s: accepted, then delivered."""
    pairs = list(zip(figures[over], figures[under], strict=True))
    accepted = [o.accepted / u.accepted for o, u in pairs]
    delivered = [o.delivered / u.delivered for o, u in pairs]
    return accepted, delivered


def table(found: Measurement) -> list[str]:
    """The Markdown tables: medians per listener, the ratios, the ceiling per run."""
    figures = found.figures
    ceiling = NULL in figures
    shown = (WITHOUT, WITH, NULL) if ceiling else (WITHOUT, WITH)
    lines = [
        "| listener | accepted msg/s | delivered msg/s |",
        "|---|---:|---:|",
    ]
    for listener in shown:
        runs = figures[listener]
        accepted = statistics.median(f.accepted for f in runs)
        delivered = statistics.median(f.delivered for f in runs)
        lines.append(f"| {listener} | {accepted:.0f} | {delivered:.0f} |")
    lines.append(ratio_row(figures, WITH, WITHOUT))
    if ceiling:
        lines.append(ratio_row(figures, NULL, WITHOUT))
        lines.append(ratio_row(figures, WITH, NULL))
    cpu = found.cpu_per_message(WITH) * 1000
    lines += ["", f"Milter CPU time: {cpu:.2f} ms per message."]
    if ceiling:
        cpu = found.cpu_per_message(NULL) * 1000
        lines += [f"Null milter CPU time: {cpu:.2f} ms per message."]
        lines += ["", *ceiling_table(figures)]
    return lines


def ratio_row(figures: dict[str, list[Figure]], over: str, under: str) -> str:
    """A row "ratio over/under": the median and range of the ratios run by run."""
    accepted, delivered = ratios(figures, over, under)
    name = f"ratio {RATIO_NAMES[over]}/{RATIO_NAMES[under]} (min-max)"
    return f"| {name} | {_ratio(accepted)} | {_ratio(delivered)} |"


def ceiling_table(figures: dict[str, list[Figure]]) -> list[str]:
    """Ours and the null milter against no milter, run by run, then the medians."""
    ours_accepted, ours_delivered = ratios(figures, WITH, WITHOUT)
    null_accepted, null_delivered = ratios(figures, NULL, WITHOUT)
    columns = [ours_accepted, null_accepted, ours_delivered, null_delivered]
    lines = [
        "| run | accepted with/without | accepted null/without "
        "| delivered with/without | delivered null/without |",
        "|---:|---:|---:|---:|---:|",
    ]
    for run, row in enumerate(zip(*columns, strict=True), start=1):
        lines.append(f"| {run} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    medians = " | ".join(f"{statistics.median(c):.2f}" for c in columns)
    lines.append(f"| median | {medians} |")
    return lines


def _ratio(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def null_milter_note(program: Path | None, unavailable: str) -> str:
    """What the third listener was, or why it was skipped."""
    if program is None:
        return f"Null milter: skipped, {unavailable}."
    return (
        f"Null milter: {NULL_SOURCE.name} in C against libmilter, negotiating the "
        "steps, macros and added header field ours does; it answers every step "
        '"continue".'
    )


def main() -> int:
    """Run the benchmark and print the command, the setup and the table."""
    args = parse_args()
    progress(f"command: {command_line()}")
    missing = [tool for tool in ("smtp-source", "smtp-sink") if not shutil.which(tool)]
    if missing:
        progress(f"missing: {', '.join(missing)} (package postfix)")
        return 1
    scratch = Path(tempfile.mkdtemp(prefix="milter-bench-"))
    null_program, unavailable = None, ""
    if args.ceiling:
        try:
            null_program = build_null_milter(scratch)
        except NullMilterUnavailable as reason:
            unavailable = str(reason)
            progress(f"null milter skipped: {unavailable}")
    bench = Bench(args, scratch, null_program)
    try:
        bench.start()
        found = measure(bench, args)
    finally:
        bench.stop()
        if args.keep:
            progress(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print("\n".join(["```sh", command_line(), "```", ""]))
    rounds = f"{args.repeat} pairs"
    if null_program is not None:
        rounds = f"{args.repeat} rounds of with/without/null"
    print(
        f"{os.cpu_count()} CPUs; {args.messages} messages a run, {args.sessions} "
        f"sessions, {args.size}-octet bodies, 1 recipient, {rounds}; "
        "delivery over LMTP to smtp-sink.\n"
    )
    if args.ceiling:
        print(null_milter_note(null_program, unavailable) + "\n")
    print("\n".join(table(found)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
