"""mdmail import: bring an existing domain over from Dovecot."""

import argparse
import sys
from pathlib import Path
from typing import Any

from mdcore.names import normalize_domain
from mdmail.context import Context
from mdmail.dovecot_import import import_domain, read_users, terminal_progress


def register(commands: Any) -> None:
    """Add the import subcommand."""
    parser = commands.add_parser("import", help="import a domain from Dovecot")
    parser.add_argument("domain")
    parser.add_argument(
        "--passwd",
        required=True,
        type=Path,
        help="Dovecot passwd-file (user@domain or user lines)",
    )
    parser.add_argument(
        "--maildirs",
        metavar="TEMPLATE",
        help="Maildir path per user, with %%d (domain), %%n (user), "
        "%%u (user@domain); default: the home field + /Maildir",
    )
    parser.set_defaults(handler=import_command)


def import_command(context: Context, args: argparse.Namespace) -> None:
    """Import accounts and mail."""
    domain = normalize_domain(args.domain)
    users = read_users(args.passwd, domain, args.maildirs)
    progress = terminal_progress if sys.stderr.isatty() else None
    copied = import_domain(context.admin, domain, users, progress)
    context.emit(
        {"domain": domain, "accounts": len(users), "messages": copied},
        f"imported {len(users)} accounts and {copied} messages into {domain}",
    )
