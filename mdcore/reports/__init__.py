"""Mail reports of a domain or the whole server, read from the logs, and traces.

The public API, shared by `mdmail report` and the web page:

    report = build_report(root, "abc.example", start, end)   # or domain=None
    render_text(report), render_json(report), render_html(report) -> str
    trace(queue_id, log_files, postfix_log) -> list[TraceStep]; render_trace(...)
"""

from mdcore.reports.build import build_report, domain_log_files, quota_use
from mdcore.reports.html import render_html
from mdcore.reports.model import AccountFigures, Latency, QuotaUse, Report, TimeBucket
from mdcore.reports.text import render_json, render_text, report_to_dict
from mdcore.reports.trace import Stage, TraceStep, render_trace, trace

__all__ = [
    "AccountFigures",
    "Latency",
    "QuotaUse",
    "Report",
    "Stage",
    "TimeBucket",
    "TraceStep",
    "build_report",
    "domain_log_files",
    "quota_use",
    "render_html",
    "render_json",
    "render_text",
    "render_trace",
    "report_to_dict",
    "trace",
]
