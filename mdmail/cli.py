"""The mdmail command: argument parsing and dispatch to the subcommand modules."""

import argparse
import sys
from collections.abc import Sequence

from mdcore.errors import MdmailError
from mdcore.logs import setup_logging
from mdmail.commands import (
    account,
    alias,
    demo,
    domain,
    explain,
    importer,
    mta,
    report,
    resolve,
    serve,
)
from mdmail.context import make_context

GROUPS = (
    domain,
    account,
    alias,
    importer,
    resolve,
    explain,
    serve,
    demo,
    mta,
    report,
)


def build_parser() -> argparse.ArgumentParser:
    """The parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="mdmail",
        description="Administer a multi-domain mail server: domains, accounts, "
        "aliases, servers.",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="server config (default: $MDMAIL_CONFIG or /etc/mdmail/mdmail.yaml)",
    )
    parser.add_argument(
        "--state-root",
        metavar="DIR",
        help="use this state root instead of the config's",
    )
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each change")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one mdmail command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        context = make_context(args)
        setup_logging(
            "mdmail",
            level="INFO" if args.verbose else "WARNING",
            root=serve.log_root(context.config),
        )
        args.handler(context, args)
    except MdmailError as error:
        print(f"mdmail: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mdmail: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
