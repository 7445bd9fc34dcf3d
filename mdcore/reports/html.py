"""A report as one self-contained HTML page: figures, inline SVG charts, tables.

No script, no external asset: the page opens from a file, in a mail client, or
inside the web page, and reads the same on a phone.
"""

from datetime import timedelta
from html import escape

from mdcore.reports.model import Report
from mdcore.reports.svg import Column, horizontal_bars, stacked_columns
from mdcore.reports.text import human_bytes

_STYLE = """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:60rem;padding:1rem;
color:#212121;background:#fafafa}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem}
.period{color:#616161;margin-top:0}
.cards{display:flex;flex-wrap:wrap;gap:.75rem}
.card{background:#fff;border:1px solid #e0e0e0;border-radius:.5rem;padding:.75rem 1rem;
min-width:9rem;flex:1}
.card b{display:block;font-size:1.6rem}.card span{color:#616161;font-size:.85rem}
table{border-collapse:collapse;width:100%;background:#fff;font-size:.9rem}
th,td{border-bottom:1px solid #e0e0e0;padding:.35rem .5rem;text-align:right}
th:first-child,td:first-child{text-align:left}
.scroll{overflow-x:auto}
svg .label{font-size:11px;fill:#424242}
.legend i{display:inline-block;width:.8rem;height:.8rem;margin:0 .3rem 0 1rem}
"""


def render_html(report: Report) -> str:
    """The report as a complete HTML document (str), safe to serve or save as is."""
    title = f"Mail report for {report.scope}"
    body = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="period">{_period(report)}</p>',
        _cards(report),
        "<h2>Deliveries over time</h2>",
        _timeline(report),
        _reasons(report),
        _accounts(report),
        _quotas(report),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


def _period(report: Report) -> str:
    start = report.start.strftime("%Y-%m-%d %H:%M")
    end = report.end.strftime("%Y-%m-%d %H:%M")
    return f"{escape(start)} to {escape(end)} UTC"


def _cards(report: Report) -> str:
    latency = report.latency
    cards = [
        ("Delivered", str(report.delivered), human_bytes(report.delivered_bytes)),
        ("Refused", str(report.refused), f"{report.deferred} deferred"),
        ("POP3 logins", str(report.logins), f"{report.login_failures} failed"),
        (
            "Retrieved",
            str(report.retrieved),
            f"{human_bytes(report.retrieved_bytes)}, {report.deleted} deleted",
        ),
        (
            "Delivery p50",
            _ms(latency.p50_ms),
            f"p90 {_ms(latency.p90_ms)}, p99 {_ms(latency.p99_ms)}",
        ),
    ]
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card"><span>{escape(name)}</span><b>{escape(value)}</b>'
            f"<span>{escape(note)}</span></div>"
            for name, value, note in cards
        )
        + "</div>"
    )


def _timeline(report: Report) -> str:
    hourly = len(report.timeline) < 2 or (
        report.timeline[1].start - report.timeline[0].start < timedelta(days=1)
    )
    label_format = "%H:%M" if hourly else "%m-%d"
    columns = [
        Column(bucket.start.strftime(label_format), bucket.delivered, bucket.refused)
        for bucket in report.timeline
    ]
    legend = (
        '<p class="legend"><i style="background:#2e7d32"></i>delivered'
        '<i style="background:#c62828"></i>refused</p>'
    )
    return stacked_columns(columns, "Messages delivered and refused") + legend


def _reasons(report: Report) -> str:
    if not report.refused_by_reason:
        return "<h2>Refusals</h2><p>No message was refused or deferred.</p>"
    rows = [
        (reason, float(count), str(count)) for reason, count in report.refused_by_reason
    ]
    return "<h2>Refusals by reason</h2>" + horizontal_bars(rows, "Refusals by reason")


def _accounts(report: Report) -> str:
    if not report.accounts:
        return "<h2>Accounts</h2><p>No activity in this period.</p>"
    head = (
        "<tr><th>Account</th><th>Delivered</th><th>Bytes</th><th>Refused</th>"
        "<th>Logins</th><th>Failed</th><th>Retrieved</th><th>Bytes</th>"
        "<th>Deleted</th></tr>"
    )
    rows = "".join(
        f"<tr><td>{escape(row.account)}</td><td>{row.delivered}</td>"
        f"<td>{human_bytes(row.delivered_bytes)}</td><td>{row.refused}</td>"
        f"<td>{row.logins}</td><td>{row.login_failures}</td><td>{row.retrieved}</td>"
        f"<td>{human_bytes(row.retrieved_bytes)}</td><td>{row.deleted}</td></tr>"
        for row in report.accounts
    )
    bars = horizontal_bars(
        [
            (row.account, float(row.delivered_bytes), human_bytes(row.delivered_bytes))
            for row in report.accounts
        ],
        "Bytes delivered per account",
    )
    return (
        "<h2>Accounts</h2>"
        + bars
        + f'<div class="scroll"><table>{head}{rows}</table></div>'
    )


def _quotas(report: Report) -> str:
    if not report.quotas:
        return ""
    rows = []
    for use in report.quotas:
        percent = use.percent
        if percent is None:
            caption = f"{human_bytes(use.bytes)}, no limit"
        else:
            caption = f"{percent:.0f}% of {human_bytes(use.limit_bytes or 0)}"
        rows.append((use.account, percent if percent is not None else 0.0, caption))
    return "<h2>Quota use now</h2>" + horizontal_bars(rows, "Quota use", 100.0)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"
