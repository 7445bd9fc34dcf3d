"""The figures of a report, as frozen records every renderer reads."""

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class AccountFigures:
    """One account's mail and POP3 figures over the period."""

    account: str
    delivered: int = 0
    delivered_bytes: int = 0
    refused: int = 0
    refused_bytes: int = 0
    deferred: int = 0
    logins: int = 0
    login_failures: int = 0
    retrieved: int = 0
    retrieved_bytes: int = 0
    deleted: int = 0


@dataclass(frozen=True)
class QuotaUse:
    """What an account's Maildir holds now, against its quota (None: unlimited)."""

    account: str
    bytes: int
    messages: int
    limit_bytes: int | None
    limit_messages: int | None

    @property
    def percent(self) -> float | None:
        """Use of the byte quota in percent, None when unlimited."""
        if not self.limit_bytes:
            return None
        return 100.0 * self.bytes / self.limit_bytes


@dataclass(frozen=True)
class Latency:
    """Delivery delay percentiles in milliseconds over `count` deliveries."""

    count: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True)
class TimeBucket:
    """Deliveries and refusals in one slice [start, start + step) of the period."""

    start: datetime
    delivered: int
    refused: int


@dataclass(frozen=True)
class Report:
    """Mail figures of one domain, or of the whole server, over [start, end)."""

    # The domain, or None for the whole server.
    domain: str | None
    start: datetime
    end: datetime
    domains: tuple[str, ...]
    delivered: int
    delivered_bytes: int
    refused: int
    refused_bytes: int
    deferred: int
    # ("5.1.1 User unknown", count), most frequent first; deferrals included.
    refused_by_reason: tuple[tuple[str, int], ...]
    logins: int
    login_failures: int
    retrieved: int
    retrieved_bytes: int
    deleted: int
    latency: Latency
    accounts: tuple[AccountFigures, ...]
    quotas: tuple[QuotaUse, ...]
    timeline: tuple[TimeBucket, ...]

    @property
    def scope(self) -> str:
        """What the report covers, for titles: the domain or "all domains"."""
        return self.domain or "all domains"
