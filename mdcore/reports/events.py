"""Log lines read back as typed events: deliveries, refusals, logins, logouts.

The components write one `key=value` line per event (see README, "Logs"); this
module is the one place that reads them back, for reports and traces.
"""

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path

from mdcore.logs import TIME_FORMAT

# "2026-12-03T22:09:14 lmtpd[123]: <message>", the format mdcore.logs writes.
_LINE = re.compile(r"^(?P<time>\S+) (?P<program>[\w.-]+)\[\d+\]: (?P<message>.*)$")

# A value runs up to the next ", key=" or " key=", so "reason=closed without QUIT"
# and "status=sent (250 2.0.0 ...)" keep their spaces.
_FIELD = re.compile(r"(?P<key>[a-z_]+)=(?P<value>.*?)(?=,? [a-z_]+=|$)")

_COUNT_PAIR = re.compile(r"^(\d+)/(\d+)$")


class DeliveryStatus(Enum):
    """How one recipient of one message ended, as the LMTP server logged it."""

    SENT = "sent"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    REJECTED = "rejected"


@dataclass(frozen=True)
class LogLine:
    """One line of our logs, split into its time, program and message."""

    time: datetime
    program: str
    message: str


@dataclass(frozen=True)
class Delivery:
    """One recipient's delivery, deferral or refusal by the LMTP server."""

    time: datetime
    queue_id: str
    domain: str
    user: str
    status: DeliveryStatus
    size: int
    delay_ms: float | None
    dsn: str
    reason: str


@dataclass(frozen=True)
class Login:
    """One POP3 login attempt and its outcome ("ok", "failed", ...)."""

    time: datetime
    session: str
    domain: str
    user: str
    outcome: str

    @property
    def succeeded(self) -> bool:
        """Whether the user got in (locally or forwarded to another server)."""
        return self.outcome in ("ok", "forward")


@dataclass(frozen=True)
class Logout:
    """The end of one POP3 session, with what it retrieved and deleted."""

    time: datetime
    session: str
    domain: str
    user: str
    retrieved: int
    retrieved_bytes: int
    deleted: int


Event = Delivery | Login | Logout


def parse_line(text: str) -> LogLine | None:
    """Split one log line; None for a line that is not ours (or a traceback)."""
    match = _LINE.match(text.rstrip("\n"))
    if match is None:
        return None
    try:
        stamp = datetime.strptime(match["time"], TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
    return LogLine(stamp, match["program"], match["message"])


def fields(message: str) -> dict[str, str]:
    """The `key=value` fields of a message; the first of a repeated key wins."""
    found: dict[str, str] = {}
    for match in _FIELD.finditer(message):
        found.setdefault(match["key"], match["value"])
    return found


def parse_event(line: LogLine) -> Event | None:
    """The event a line records, or None for lines no report counts."""
    # Limitation: refusals made during the SMTP dialogue are not counted: the
    # milter's "milter to=<...>, ... status=rejected" lines are skipped, and
    # Postfix's own (relay_recipient_maps) are only in its log; reading the
    # milter's lines as refusals would lift the first half.
    head, _, rest = line.message.partition(": ")
    if rest.startswith("to=<"):
        return _delivery(line.time, head, fields(rest))
    if rest.startswith("login "):
        return _login(line.time, head, fields(rest))
    if rest.startswith("logout "):
        return _logout(line.time, head, fields(rest))
    return None


def read_lines(paths: Iterable[Path]) -> Iterator[LogLine]:
    """Every parsed line of the given files, in file order; missing files skipped."""
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as stream:
                for text in stream:
                    line = parse_line(text)
                    if line is not None:
                        yield line
        except FileNotFoundError:
            continue


def read_events(
    paths: Iterable[Path], start: datetime, end: datetime
) -> Iterator[Event]:
    """The events of the given files that happened in [start, end)."""
    for line in read_lines(paths):
        if start <= line.time < end:
            event = parse_event(line)
            if event is not None:
                yield event


def _status_and_reason(value: str) -> tuple[str, str]:
    word, _, reason = value.partition(" ")
    return word, reason.strip().removeprefix("(").removesuffix(")")


def _delivery(time: datetime, queue_id: str, found: dict[str, str]) -> Delivery | None:
    word, reason = _status_and_reason(found.get("status", ""))
    try:
        status = DeliveryStatus(word)
    except ValueError:
        # "partial" notes outside alias targets: the delivery line counts.
        return None
    delay = found.get("delay")
    return Delivery(
        time=time,
        queue_id=queue_id,
        domain=found.get("domain", "-"),
        user=found.get("user", "-"),
        status=status,
        size=_int(found.get("size", "0")),
        delay_ms=float(delay) * 1000 if delay else None,
        dsn=found.get("dsn", ""),
        reason=reason,
    )


def _login(time: datetime, session: str, found: dict[str, str]) -> Login:
    return Login(
        time=time,
        session=session,
        domain=found.get("domain", "-"),
        user=found.get("user", "-"),
        outcome=found.get("status", ""),
    )


def _logout(time: datetime, session: str, found: dict[str, str]) -> Logout:
    retrieved, retrieved_bytes = _pair(found.get("retr", ""))
    deleted, _ = _pair(found.get("del", ""))
    return Logout(
        time=time,
        session=session,
        domain=found.get("domain", "-"),
        user=found.get("user", "-"),
        retrieved=retrieved,
        retrieved_bytes=retrieved_bytes,
        deleted=deleted,
    )


def _pair(value: str) -> tuple[int, int]:
    match = _COUNT_PAIR.match(value)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def _int(value: str) -> int:
    return int(value) if value.isdigit() else 0
