"""mdmail demo: two domains sharing a user name, on embedded defaults (mdmail.demo)."""

import argparse
from typing import Any

from mdmail.context import Context

DEMO_ROOT = "demo-state"


def register(commands: Any) -> None:
    """Add the demo subcommand."""
    parser = commands.add_parser(
        "demo", help="build two demo domains and send mail through the LMTP server"
    )
    parser.set_defaults(handler=demo_command, default_state_root=DEMO_ROOT)


def demo_command(context: Context, args: argparse.Namespace) -> None:
    """Build the demo state from scratch and walk through it."""
    # Imported here: the demo's servers and clients are not loaded into every
    # mdmail command, and above all not into each server process.
    from mdmail import demo

    demo.run(context)
