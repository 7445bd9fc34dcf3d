"""Building a report: read a domain's log (or every domain's), count, read quotas."""

import math
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from mdcore.layout import DomainTree, StateRoot, hosted_domains
from mdcore.logs import DOMAIN_LOG_NAME
from mdcore.namespace import load_namespace
from mdcore.quota import QuotaLimits, read_usage
from mdcore.reports.events import (
    Delivery,
    DeliveryStatus,
    Event,
    Login,
    Logout,
    read_events,
)
from mdcore.reports.model import (
    AccountFigures,
    Latency,
    QuotaUse,
    Report,
    TimeBucket,
)

# Periods up to this long are charted by the hour, longer ones by the day.
_HOURLY_UP_TO = timedelta(days=3)


@dataclass
class _Tally:
    """Counts gathered while reading events; frozen into a Report at the end."""

    accounts: dict[str, AccountFigures]
    reasons: Counter[str]
    delays: list[float]
    buckets: dict[datetime, tuple[int, int]]


def domain_log_files(tree: DomainTree) -> list[Path]:
    """A domain's log and its rotated plain copies (mail.log.1, ...), oldest first."""
    rotated = sorted(
        (path for path in tree.logs.glob(DOMAIN_LOG_NAME + ".*") if _rotation(path)),
        key=_rotation,
        reverse=True,
    )
    return [*rotated, tree.logs / DOMAIN_LOG_NAME]


def build_report(
    root: StateRoot,
    domain: str | None,
    start: datetime,
    end: datetime,
) -> Report:
    """The report of one domain (its own log only) or of all hosted domains."""
    domains = [domain] if domain is not None else hosted_domains(root)
    tally = _Tally({}, Counter(), [], {})
    step = timedelta(hours=1) if end - start <= _HOURLY_UP_TO else timedelta(days=1)
    for name in domains:
        tree = root.tree(name)
        # A line of another domain cannot be in this tree's log; checking the
        # domain field as well keeps a hand-edited log from leaking into a report.
        for event in read_events(domain_log_files(tree), start, end):
            if event.domain == name:
                _count(tally, event, _bucket(event.time, start, step))
    quotas = [use for name in domains for use in quota_use(root.tree(name))]
    return _freeze(domain, start, end, domains, tally, quotas, step)


def quota_use(tree: DomainTree) -> list[QuotaUse]:
    """Current quota use of every account of a domain that has a Maildir."""
    namespace = load_namespace(tree)
    uses = []
    for name in sorted(namespace.account_names):
        account = namespace.account(name)
        maildir = tree.maildir(name)
        if account is None or not (maildir / "cur").is_dir():
            continue
        limits = QuotaLimits(account.quota_bytes, account.quota_messages)
        usage = read_usage(maildir, limits if account.quota_bytes else None)
        uses.append(
            QuotaUse(
                f"{name}@{tree.domain}",
                usage.bytes,
                usage.messages,
                account.quota_bytes,
                account.quota_messages,
            )
        )
    return uses


def percentile(values: list[float], fraction: float) -> float | None:
    """The nearest-rank percentile of sorted `values`, None when there are none."""
    if not values:
        return None
    rank = max(1, math.ceil(fraction * len(values)))
    return values[rank - 1]


def _count(tally: _Tally, event: Event, bucket: datetime) -> None:
    key = f"{event.user}@{event.domain}"
    figures = tally.accounts.get(key) or AccountFigures(key)
    if isinstance(event, Delivery):
        figures = _count_delivery(tally, figures, event, bucket)
    elif isinstance(event, Login):
        won = event.succeeded
        figures = replace(
            figures,
            logins=figures.logins + won,
            login_failures=figures.login_failures + (not won),
        )
    elif isinstance(event, Logout):
        figures = replace(
            figures,
            retrieved=figures.retrieved + event.retrieved,
            retrieved_bytes=figures.retrieved_bytes + event.retrieved_bytes,
            deleted=figures.deleted + event.deleted,
        )
    tally.accounts[key] = figures


def _count_delivery(
    tally: _Tally, figures: AccountFigures, event: Delivery, bucket: datetime
) -> AccountFigures:
    delivered, refused = tally.buckets.get(bucket, (0, 0))
    if event.status is DeliveryStatus.SENT:
        tally.buckets[bucket] = (delivered + 1, refused)
        if event.delay_ms is not None:
            tally.delays.append(event.delay_ms)
        return replace(
            figures,
            delivered=figures.delivered + 1,
            delivered_bytes=figures.delivered_bytes + event.size,
        )
    tally.reasons[f"{event.dsn} {event.reason}".strip()] += 1
    if event.status is DeliveryStatus.DEFERRED:
        return replace(figures, deferred=figures.deferred + 1)
    tally.buckets[bucket] = (delivered, refused + 1)
    return replace(
        figures,
        refused=figures.refused + 1,
        refused_bytes=figures.refused_bytes + event.size,
    )


def _freeze(
    domain: str | None,
    start: datetime,
    end: datetime,
    domains: list[str],
    tally: _Tally,
    quotas: list[QuotaUse],
    step: timedelta,
) -> Report:
    accounts = tuple(tally.accounts[key] for key in sorted(tally.accounts))

    def total(name: str) -> int:
        return sum(int(getattr(figures, name)) for figures in accounts)

    delays = sorted(tally.delays)
    latency = Latency(
        len(delays),
        percentile(delays, 0.50),
        percentile(delays, 0.90),
        percentile(delays, 0.99),
    )
    return Report(
        domain=domain,
        start=start,
        end=end,
        domains=tuple(domains),
        refused_by_reason=tuple(tally.reasons.most_common()),
        latency=latency,
        accounts=accounts,
        quotas=tuple(quotas),
        timeline=_timeline(tally.buckets, start, end, step),
        delivered=total("delivered"),
        delivered_bytes=total("delivered_bytes"),
        refused=total("refused"),
        refused_bytes=total("refused_bytes"),
        deferred=total("deferred"),
        logins=total("logins"),
        login_failures=total("login_failures"),
        retrieved=total("retrieved"),
        retrieved_bytes=total("retrieved_bytes"),
        deleted=total("deleted"),
    )


def _timeline(
    buckets: dict[datetime, tuple[int, int]],
    start: datetime,
    end: datetime,
    step: timedelta,
) -> tuple[TimeBucket, ...]:
    # Every slice of the period, empty ones included, so a chart shows quiet hours.
    slices: list[TimeBucket] = []
    moment = start
    while moment < end and len(slices) < 1000:
        delivered, refused = buckets.get(moment, (0, 0))
        slices.append(TimeBucket(moment, delivered, refused))
        moment += step
    return tuple(slices)


def _bucket(time: datetime, start: datetime, step: timedelta) -> datetime:
    return start + step * ((time - start) // step)


def _rotation(path: Path) -> int:
    suffix = path.name.removeprefix(DOMAIN_LOG_NAME + ".")
    return int(suffix) if suffix.isdigit() else 0
