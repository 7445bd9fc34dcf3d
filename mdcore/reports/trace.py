"""Following one message by its MTA queue id: Postfix's log, then ours, to the mailbox.

Postfix logs every step of a message with its queue id (`smtpd` for the SMTP
client, `cleanup` and `qmgr` for the queue, `lmtp` for the hand-over to us), and
the LMTP server and the milter log the same id, passed by XFORWARD IDENT or the
milter macro {i}.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from mdcore.reports.events import read_lines

# "Dec  3 22:09:14 host postfix/smtpd[123]: 4AbC1D2E3F: client=..." (syslog or
# maillog_file), or the same after an ISO 8601 time stamp.
_POSTFIX = re.compile(
    r"^(?P<time>.*?)\s+\S+ (?P<program>postfix[\w/.-]*)\[\d+\]: "
    r"(?P<queue_id>[0-9A-Za-z]+): (?P<text>.*)$"
)


class Stage(Enum):
    """Where a message was when a line was written."""

    SMTP = "SMTP"
    QUEUE = "queue"
    MILTER = "milter"
    LMTP = "LMTP"
    MAILBOX = "mailbox"
    OTHER = "other"


@dataclass(frozen=True)
class TraceStep:
    """One log line about the message, with where it comes from."""

    time: str
    stage: Stage
    program: str
    text: str


def trace(
    queue_id: str, our_logs: Iterable[Path], postfix_log: Path | None = None
) -> list[TraceStep]:
    """Every step logged for `queue_id`: Postfix's lines first, then ours."""
    steps = _postfix_steps(queue_id, postfix_log) if postfix_log else []
    prefix = f"{queue_id}: "
    for line in read_lines(our_logs):
        if line.message.startswith(prefix):
            text = line.message.removeprefix(prefix)
            stage = _our_stage(line.program, text)
            steps.append(TraceStep(line.time.isoformat(), stage, line.program, text))
    return steps


def render_trace(queue_id: str, steps: list[TraceStep]) -> str:
    """The steps as text, with the path the message took on the first line."""
    if not steps:
        return f"{queue_id}: no line of any log names this queue id\n"
    path: list[str] = []
    for step in steps:
        if step.stage is not Stage.OTHER and step.stage.value not in path:
            path.append(step.stage.value)
    lines = [f"{queue_id}: {' -> '.join(path)}"]
    lines += [
        f"  {step.stage.value:8} {step.time}  {step.program}: {step.text}"
        for step in steps
    ]
    return "\n".join(lines) + "\n"


def _postfix_steps(queue_id: str, path: Path) -> list[TraceStep]:
    steps = []
    with open(path, encoding="utf-8", errors="replace") as stream:
        for text in stream:
            match = _POSTFIX.match(text.rstrip("\n"))
            if match is None or match["queue_id"] != queue_id:
                continue
            program = match["program"]
            steps.append(
                TraceStep(
                    match["time"].strip(),
                    _postfix_stage(program),
                    program,
                    match["text"],
                )
            )
    return steps


def _postfix_stage(program: str) -> Stage:
    service = program.rsplit("/", 1)[-1]
    if service == "smtpd":
        return Stage.SMTP
    if service in ("cleanup", "qmgr", "pickup"):
        return Stage.QUEUE
    if service == "lmtp":
        return Stage.LMTP
    return Stage.OTHER


def _our_stage(program: str, text: str) -> Stage:
    if text.startswith("milter "):
        return Stage.MILTER
    if text.startswith("to=<"):
        return Stage.MAILBOX
    return Stage.LMTP if program == "lmtpd" else Stage.OTHER
