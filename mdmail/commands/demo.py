"""mdmail demo: two domains sharing a user name, on embedded defaults."""

import argparse
import shutil
from typing import Any

from mdcore.namespace import Registry
from mdcore.passwords import verify_password
from mdcore.resolve import resolve
from mdmail.context import Context

DEMO_ROOT = "demo-state"

ADDRESSES = (
    "foo@abc.example",
    "FOO@ABC.example",
    "foo+news@abc.example",
    "foo@xyz.example",
    "sales@abc.example",
    "anything@xyz.example",
    "foo@old-xyz.example",
    "nobody@abc.example",
    "foo@elsewhere.example",
    "../etc@abc.example",
)


def register(commands: Any) -> None:
    """Add the demo subcommand."""
    parser = commands.add_parser(
        "demo", help="build two demo domains and show how addresses resolve"
    )
    parser.set_defaults(handler=demo_command, default_state_root=DEMO_ROOT)


def demo_command(context: Context, args: argparse.Namespace) -> None:
    """Build the demo state from scratch and walk through it."""
    root = context.config.root
    shutil.rmtree(root.path, ignore_errors=True)
    say = context.out.write
    say(f"Demo state root: {root.path}\n\n")

    admin = context.admin
    admin.add_domain("abc.example", {"description": "ABC Corp."})
    admin.add_domain(
        "xyz.example", {"description": "XYZ Inc.", "default_quota_bytes": 10485760}
    )
    admin.add_account("abc.example", "foo", "abc-secret")
    admin.add_account("abc.example", "bar", "bar-secret")
    admin.add_account("xyz.example", "foo", "xyz-secret")
    admin.add_alias("abc.example", "sales", ["foo", "bar", "partner@elsewhere.example"])
    admin.add_alias("xyz.example", "@", ["foo"])
    admin.add_domain_alias("old-xyz.example", "xyz.example")
    for domain in admin.domains():
        tree = admin.tree(domain)
        say(f"{domain}: tree {tree.path}\n")
        for account in admin.accounts(domain):
            say(f"  account {account.name}: {tree.maildir(account.name)}\n")
        for name, targets in admin.aliases(domain).items():
            say(f"  alias {name} -> {', '.join(targets)}\n")
    say("  alias domain old-xyz.example -> xyz.example\n\n")

    registry = Registry(root)
    say("How addresses resolve (one function, used by every component):\n")
    for address in ADDRESSES:
        result = resolve(registry, address)
        mailboxes = [f"{box.account}@{box.domain}" for box in result.mailboxes]
        found = mailboxes + list(result.external)
        shown = f" -> {', '.join(found)}" if found else ""
        say(f"  {address:24} {result.outcome.value}{shown}\n")

    say("\nSame user name, two people:\n")
    for domain in ("abc.example", "xyz.example"):
        namespace = registry.namespace(domain)
        stored = namespace.account("foo") if namespace else None
        ok = verify_password(stored.password if stored else None, "abc-secret")
        verdict = "accepted" if ok else "refused"
        say(f"  foo@{domain} with password 'abc-secret': {verdict}\n")
