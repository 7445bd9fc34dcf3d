"""A report as plain text for the terminal, and as JSON for scripts."""

import json
from dataclasses import asdict
from datetime import datetime
from typing import Any

from mdcore.reports.model import AccountFigures, Report


def report_to_dict(report: Report) -> dict[str, Any]:
    """The report as plain JSON types (times as ISO 8601 strings)."""
    data = asdict(report)
    data["scope"] = report.scope
    data["refused_by_reason"] = [
        {"reason": reason, "count": count} for reason, count in report.refused_by_reason
    ]
    for use, record in zip(data["quotas"], report.quotas, strict=True):
        use["percent"] = record.percent
    return _plain(data)  # type: ignore[no-any-return]


def render_json(report: Report) -> str:
    """The report as an indented JSON document."""
    return json.dumps(report_to_dict(report), indent=2, sort_keys=True) + "\n"


def render_text(report: Report) -> str:
    """The report as aligned text an admin reads in a terminal."""
    lines = [
        f"Mail report for {report.scope}",
        f"Period: {_time(report.start)} to {_time(report.end)} (UTC)",
        "",
        f"Delivered: {report.delivered} messages, "
        f"{human_bytes(report.delivered_bytes)}",
        f"Refused:   {report.refused} messages, {human_bytes(report.refused_bytes)}",
        f"Deferred:  {report.deferred}",
        f"POP3:      {report.logins} logins, {report.login_failures} failed, "
        f"{report.retrieved} retrieved ({human_bytes(report.retrieved_bytes)}), "
        f"{report.deleted} deleted",
        _latency_line(report),
    ]
    if report.refused_by_reason:
        lines += ["", "Refused or deferred, by reason:"]
        lines += [
            f"  {count:6d}  {reason}" for reason, count in report.refused_by_reason
        ]
    if report.accounts:
        lines += ["", "Per account:", _account_header()]
        lines += [_account_row(figures) for figures in report.accounts]
    if report.quotas:
        lines += ["", "Quota use:"]
        for use in report.quotas:
            limit = human_bytes(use.limit_bytes) if use.limit_bytes else "unlimited"
            shown = f" ({use.percent:.0f}%)" if use.percent is not None else ""
            lines.append(
                f"  {use.account:32} {human_bytes(use.bytes):>10} of {limit}"
                f"{shown}, {use.messages} messages"
            )
    return "\n".join(lines) + "\n"


def human_bytes(count: int) -> str:
    """A byte count as "532 B", "12.4 KiB", "3.0 MiB"."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def _latency_line(report: Report) -> str:
    latency = report.latency
    if not latency.count:
        return "Latency:   no deliveries"
    return (
        f"Latency:   p50 {_ms(latency.p50_ms)}, p90 {_ms(latency.p90_ms)}, "
        f"p99 {_ms(latency.p99_ms)} over {latency.count} deliveries"
    )


def _account_header() -> str:
    return (
        f"  {'account':32} {'deliv':>6} {'bytes':>10} {'refus':>6} "
        f"{'login':>6} {'fail':>5} {'retr':>5} {'bytes':>10} {'del':>5}"
    )


def _account_row(figures: AccountFigures) -> str:
    return (
        f"  {figures.account:32} {figures.delivered:6d} "
        f"{human_bytes(figures.delivered_bytes):>10} {figures.refused:6d} "
        f"{figures.logins:6d} {figures.login_failures:5d} {figures.retrieved:5d} "
        f"{human_bytes(figures.retrieved_bytes):>10} {figures.deleted:5d}"
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M")


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value
