"""A domain's mail report for its admins, from mdcore's report builder when present.

The report code (mdcore.reports) is looked up at run time, so the page keeps
working, without the report link, on an install that lacks it.
"""

import importlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from mdcore.layout import StateRoot

log = logging.getLogger(__name__)

# What the page shows: the last week, the span a domain admin looks at most.
REPORT_DAYS = 7


def _functions() -> tuple[Any, Any] | None:
    try:
        build = importlib.import_module("mdcore.reports.build")
        html = importlib.import_module("mdcore.reports.html")
    except ImportError:
        return None
    builder = getattr(build, "build_report", None)
    renderer = getattr(html, "render_html", None)
    if not callable(builder) or not callable(renderer):
        return None
    return builder, renderer


def available() -> bool:
    """Whether this install can build reports."""
    return _functions() is not None


def domain_report(root: StateRoot, domain: str) -> str | None:
    """The domain's report of the last week as an HTML page, or None."""
    functions = _functions()
    if functions is None:
        return None
    builder, renderer = functions
    end = datetime.now(UTC)
    report = builder(root, domain, end - timedelta(days=REPORT_DAYS), end)
    return str(renderer(report))
