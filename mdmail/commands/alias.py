"""mdmail alias: aliases, catch-alls and alias domains."""

import argparse
from typing import Any

from mdcore.aliases import CATCH_ALL
from mdcore.names import normalize_domain
from mdmail.context import Context, split_address


def register(commands: Any) -> None:
    """Add the alias subcommands."""
    parser = commands.add_parser("alias", help="aliases, catch-alls, alias domains")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    add = actions.add_parser("add", help="send an address to one or more targets")
    add.add_argument("address", help="alias@domain")
    add.add_argument(
        "targets", nargs="+", help="local part of the same domain, or user@domain"
    )
    add.set_defaults(handler=add_alias)

    remove = actions.add_parser("remove", help="remove an alias or some targets")
    remove.add_argument("address")
    remove.add_argument("targets", nargs="*")
    remove.set_defaults(handler=remove_alias)

    listing = actions.add_parser("list", help="list a domain's aliases")
    listing.add_argument("domain")
    listing.set_defaults(handler=list_aliases)

    catch_all = actions.add_parser("catch-all", help="where unknown users' mail goes")
    catch_all.add_argument("domain")
    catch_all.add_argument("targets", nargs="*", help="none: remove the catch-all")
    catch_all.set_defaults(handler=set_catch_all)

    domain = actions.add_parser("domain", help="make ALIAS deliver as DOMAIN")
    domain.add_argument("alias_domain")
    domain.add_argument("domain", nargs="?", help="omit to remove the alias domain")
    domain.set_defaults(handler=domain_alias)


def add_alias(context: Context, args: argparse.Namespace) -> None:
    """Add an alias or targets to it."""
    local, domain = split_address(args.address)
    targets = context.admin.add_alias(domain, local, args.targets)
    context.emit(
        {"alias": f"{local}@{domain}", "targets": targets},
        f"{local}@{domain} -> {', '.join(targets)}",
    )


def remove_alias(context: Context, args: argparse.Namespace) -> None:
    """Remove an alias or some of its targets."""
    local, domain = split_address(args.address)
    context.admin.remove_alias(domain, local, args.targets or None)
    context.emit({"removed": args.address}, f"removed {args.address}")


def list_aliases(context: Context, args: argparse.Namespace) -> None:
    """List aliases."""
    tree = context.admin.tree(args.domain)
    aliases = context.admin.aliases(tree.domain)
    lines = [
        f"{'(catch-all)' if name == CATCH_ALL else name}@{tree.domain} -> "
        + ", ".join(targets)
        for name, targets in aliases.items()
    ]
    context.emit(
        {name: list(targets) for name, targets in aliases.items()}, "\n".join(lines)
    )


def set_catch_all(context: Context, args: argparse.Namespace) -> None:
    """Set or remove a domain's catch-all."""
    domain = normalize_domain(args.domain)
    if args.targets:
        targets = context.admin.add_alias(domain, CATCH_ALL, args.targets)
        context.emit(
            {"catch_all": domain, "targets": targets},
            f"catch-all of {domain} -> {', '.join(targets)}",
        )
    else:
        context.admin.remove_alias(domain, CATCH_ALL)
        context.emit(
            {"catch_all": domain, "targets": []}, f"removed catch-all of {domain}"
        )


def domain_alias(context: Context, args: argparse.Namespace) -> None:
    """Add or remove an alias domain."""
    if args.domain:
        context.admin.add_domain_alias(args.alias_domain, args.domain)
        context.emit(
            {"alias_domain": args.alias_domain, "domain": args.domain},
            f"{args.alias_domain} now delivers as {args.domain}",
        )
    else:
        context.admin.remove_domain_alias(args.alias_domain)
        context.emit(
            {"removed": args.alias_domain}, f"removed alias domain {args.alias_domain}"
        )
