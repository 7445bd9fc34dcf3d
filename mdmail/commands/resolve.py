"""mdmail resolve: what an address means in its domain's namespace."""

import argparse
from typing import Any

from mdcore.namespace import Registry
from mdcore.resolve import resolve
from mdmail.context import Context


def register(commands: Any) -> None:
    """Add the resolve subcommand."""
    parser = commands.add_parser("resolve", help="show what addresses resolve to")
    parser.add_argument("addresses", nargs="+", metavar="ADDRESS")
    parser.set_defaults(handler=resolve_command)


def resolve_command(context: Context, args: argparse.Namespace) -> None:
    """Resolve each address and print the outcome."""
    registry = Registry(context.config.root)
    results = []
    lines = []
    for address in args.addresses:
        result = resolve(registry, address)
        mailboxes = [f"{box.account}@{box.domain}" for box in result.mailboxes]
        results.append(
            {
                "address": address,
                "outcome": result.outcome.value,
                "domain": result.domain,
                "local": result.local,
                "detail": result.detail,
                "mailboxes": mailboxes,
                "external": list(result.external),
                "reason": result.reason,
            }
        )
        lines.append(
            _line(
                address,
                result.outcome.value,
                mailboxes + list(result.external),
                result.reason,
            )
        )
    context.emit(results, "\n".join(lines))


def _line(address: str, outcome: str, targets: list[str], reason: str) -> str:
    shown = f"{address}: {outcome}"
    if targets:
        shown += " -> " + ", ".join(targets)
    if reason:
        shown += f" ({reason})"
    return shown
