"""mdmail serve: run one of the servers in the foreground."""

import argparse
from dataclasses import replace
from typing import Any

from lmtpd.main import run
from mdcore.logs import setup_logging
from mdmail.context import Context


def register(commands: Any) -> None:
    """Add the serve subcommands."""
    parser = commands.add_parser("serve", help="run a server in the foreground")
    servers = parser.add_subparsers(dest="server", required=True, metavar="SERVER")
    lmtp = servers.add_parser(
        "lmtp",
        help="the LMTP delivery server (SIGTERM stops, SIGHUP reloads)",
    )
    lmtp.add_argument(
        "--listen",
        action="append",
        metavar="SPEC",
        help="unix:/path or inet:ADDRESS:PORT, instead of the config's (repeatable)",
    )
    lmtp.set_defaults(handler=serve_lmtp)


def serve_lmtp(context: Context, args: argparse.Namespace) -> None:
    """Run the LMTP server."""
    config = context.config
    if args.listen:
        config = replace(config, lmtp=replace(config.lmtp, listen=tuple(args.listen)))
    setup_logging("lmtpd", config.log.level, config.log.file, config.root)
    run(config)
