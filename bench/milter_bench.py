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
Run: .venv/bin/python bench/milter_bench.py [--messages 2000] [--repeat 3]
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

from harness import command_line, progress

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mdcore.admin import Admin  # noqa: E402
from mdcore.layout import StateRoot  # noqa: E402
from tests.conftest import SECRET_HASH  # noqa: E402
from tests.milter_process import MilterProcess  # noqa: E402
from tests.mta import PostfixInstance, free_port, wait_until  # noqa: E402

DOMAIN = "bench.example"
RECIPIENT = f"alice@{DOMAIN}"
SENDER = "sender@x.test"
# A quota makes every RCPT read the mailbox's maildirsize, as it would in use.
QUOTA_BYTES = 10 * 1024**3
WARM_UP_MESSAGES = 100
WITH, WITHOUT = "with milter", "without milter"


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
    return parser.parse_args()


class SentCounter:
    """Counts Postfix's status=sent lines, reading only what was added since."""

    def __init__(self, maillog: Path) -> None:
        self.maillog = maillog
        self.offset = 0
        self.sent = 0

    def count(self) -> int:
        """Deliveries logged so far."""
        if self.maillog.exists():
            with self.maillog.open("rb") as log:
                log.seek(self.offset)
                chunk = log.read()
            # Only whole lines: a line still being written is read next time.
            whole = chunk[: chunk.rfind(b"\n") + 1]
            self.offset += len(whole)
            self.sent += whole.count(b" status=sent ")
        return self.sent


class Bench:
    """The milter, smtp-sink and Postfix in a scratch folder."""

    def __init__(self, args: argparse.Namespace, scratch: Path) -> None:
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
        self.counter = SentCounter(self.postfix.maillog)

    def start(self) -> None:
        """Start the milter, the sink and Postfix, each once it can be reached."""
        self.milter.start()
        sink = ["smtp-sink", "-L", "-u", "nobody", f"127.0.0.1:{self.sink_port}", "256"]
        self.sink = subprocess.Popen(sink, stdout=subprocess.DEVNULL)
        self.postfix.start()

    def stop(self) -> None:
        """Stop all three (the milter with SIGTERM, as systemd would)."""
        self.postfix.stop()
        if self.sink is not None:
            self.sink.terminate()
            self.sink.wait()
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

    def milter_cpu_seconds(self) -> float:
        """CPU time (user + system) the milter process has used so far."""
        assert self.milter.process is not None
        stat = Path(f"/proc/{self.milter.process.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    bench: Bench, args: argparse.Namespace
) -> tuple[dict[str, list[Figure]], float]:
    """Warm up, then `repeat` pairs in alternating order; also the milter's CPU/msg."""
    for listener in (WITH, WITHOUT):
        bench.run(listener, WARM_UP_MESSAGES)
    figures: dict[str, list[Figure]] = {WITH: [], WITHOUT: []}
    cpu = 0.0
    for turn in range(args.repeat):
        order = (WITH, WITHOUT) if turn % 2 == 0 else (WITHOUT, WITH)
        for listener in order:
            before = bench.milter_cpu_seconds()
            figure = bench.run(listener, args.messages)
            if listener == WITH:
                cpu += bench.milter_cpu_seconds() - before
            figures[listener].append(figure)
            progress(
                f"run {turn + 1} {listener}: accepted {figure.accepted:.0f}/s, "
                f"delivered {figure.delivered:.0f}/s"
            )
    return figures, cpu / (args.repeat * args.messages)


def table(figures: dict[str, list[Figure]], cpu_per_message: float) -> list[str]:
    """The Markdown table: medians per listener, then the ratio of each pair."""
    lines = [
        "| listener | accepted msg/s | delivered msg/s |",
        "|---|---:|---:|",
    ]
    for listener in (WITHOUT, WITH):
        runs = figures[listener]
        accepted = statistics.median(f.accepted for f in runs)
        delivered = statistics.median(f.delivered for f in runs)
        lines.append(f"| {listener} | {accepted:.0f} | {delivered:.0f} |")
    pairs = list(zip(figures[WITH], figures[WITHOUT], strict=True))
    ratios = [
        _ratio([w.accepted / o.accepted for w, o in pairs]),
        _ratio([w.delivered / o.delivered for w, o in pairs]),
    ]
    lines.append(f"| ratio with/without (min-max) | {ratios[0]} | {ratios[1]} |")
    lines += ["", f"Milter CPU time: {cpu_per_message * 1000:.2f} ms per message."]
    return lines


def _ratio(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> int:
    """Run the benchmark and print the command, the setup and the table."""
    args = parse_args()
    progress(f"command: {command_line()}")
    missing = [tool for tool in ("smtp-source", "smtp-sink") if not shutil.which(tool)]
    if missing:
        progress(f"missing: {', '.join(missing)} (package postfix)")
        return 1
    scratch = Path(tempfile.mkdtemp(prefix="milter-bench-"))
    bench = Bench(args, scratch)
    try:
        bench.start()
        figures, cpu = measure(bench, args)
    finally:
        bench.stop()
        if args.keep:
            progress(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print("\n".join(["```sh", command_line(), "```", ""]))
    print(
        f"{os.cpu_count()} CPUs; {args.messages} messages a run, {args.sessions} "
        f"sessions, {args.size}-octet bodies, 1 recipient, {args.repeat} pairs; "
        "delivery over LMTP to smtp-sink.\n"
    )
    print("\n".join(table(figures, cpu)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
