"""mdmail report: a domain's or the server's mail figures, and tracing a message."""

import argparse
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mdcore.errors import MdmailError
from mdcore.layout import StateRoot, hosted_domains
from mdcore.names import normalize_domain
from mdcore.reports import (
    build_report,
    domain_log_files,
    render_html,
    render_json,
    render_text,
    render_trace,
    trace,
)
from mdmail.context import Context

_SPAN = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def register(commands: Any) -> None:
    """Add the report command and its trace action."""
    parser = commands.add_parser(
        "report", help="mail figures of a domain or the server; trace a message"
    )
    parser.add_argument("--domain", help="report on this domain only (its own log)")
    period = parser.add_mutually_exclusive_group()
    period.add_argument("--since", metavar="ISO", help="start, e.g. 2026-12-01T00:00")
    period.add_argument(
        "--last", metavar="SPAN", help="the last 30m, 24h, 7d or 2w (default 24h)"
    )
    parser.add_argument("--until", metavar="ISO", help="end (default: now)")
    parser.add_argument(
        "--json", dest="report_json", action="store_true", help="print JSON"
    )
    parser.add_argument("--html", metavar="FILE", help="also write an HTML report")
    parser.set_defaults(handler=report_command)

    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    follow = actions.add_parser(
        "trace", help="follow a message by its MTA queue id, SMTP to mailbox"
    )
    follow.add_argument("queue_id", metavar="QUEUEID")
    # SUPPRESS: without it the action's default would undo a --domain given
    # before the word "trace".
    follow.add_argument(
        "--domain",
        default=argparse.SUPPRESS,
        help="read this domain's own log only (also accepted before 'trace')",
    )
    follow.add_argument(
        "--postfix-log", metavar="FILE", help="Postfix's log (e.g. /var/log/mail.log)"
    )
    follow.set_defaults(handler=trace_command)


def report_command(context: Context, args: argparse.Namespace) -> None:
    """Build the report for the period and print it; write the HTML if asked."""
    root = context.config.root
    domain = _domain(root, args.domain)
    start, end = period(args.since, args.last, args.until, datetime.now(UTC))
    report = build_report(root, domain, start, end)
    if args.html:
        _write_html(Path(args.html), render_html(report))
    if args.report_json or context.as_json:
        context.out.write(render_json(report))
    else:
        context.out.write(render_text(report))


def trace_command(context: Context, args: argparse.Namespace) -> None:
    """Print every logged step of one message, from Postfix's log and ours."""
    root = context.config.root
    domain = _domain(root, args.domain)
    postfix_log = Path(args.postfix_log) if args.postfix_log else None
    if postfix_log is not None and not postfix_log.is_file():
        raise MdmailError(f"{postfix_log}: no such file")
    steps = trace(args.queue_id, _our_logs(context, domain), postfix_log)
    context.out.write(render_trace(args.queue_id, steps))


def period(
    since: str | None, last: str | None, until: str | None, now: datetime
) -> tuple[datetime, datetime]:
    """The period [start, end) the options ask for, in UTC."""
    end = parse_time(until) if until else now
    start = parse_time(since) if since else end - parse_span(last or "24h")
    if start >= end:
        raise MdmailError("the period is empty: its start is not before its end")
    return start, end


def parse_time(text: str) -> datetime:
    """An ISO 8601 time; one without a zone is taken as UTC, as the logs are."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise MdmailError(f"{text!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def parse_span(text: str) -> timedelta:
    """A span such as 30m, 24h, 7d or 2w."""
    match = _SPAN.match(text.strip())
    if match is None or int(match[1]) == 0:
        raise MdmailError(f"{text!r} is not a span such as 30m, 24h, 7d or 2w")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def _domain(root: StateRoot, name: str | None) -> str | None:
    if name is None:
        return None
    domain = normalize_domain(name)
    if not root.tree(domain).path.is_dir():
        raise MdmailError(f"{domain}: not a hosted domain")
    return domain


def _write_html(path: Path, page: str) -> None:
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as error:
        raise MdmailError(f"{path}: cannot write: {error.strerror}") from None


def _our_logs(context: Context, domain: str | None) -> list[Path]:
    root = context.config.root
    if domain is not None:
        return domain_log_files(root.tree(domain))
    # The server log also holds lines without a domain (refusals for domains not
    # hosted here); without one, every domain's own log together.
    server_log = context.config.log.file
    if server_log and Path(server_log).is_file():
        return [Path(server_log)]
    return [
        path
        for name in hosted_domains(root)
        for path in domain_log_files(root.tree(name))
    ]
