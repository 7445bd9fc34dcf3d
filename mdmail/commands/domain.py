"""mdmail domain: add, remove, list, show and change hosted domains."""

import argparse
from typing import Any

import yaml

from mdcore import schema
from mdcore.errors import AdminError
from mdcore.names import display_domain
from mdmail.context import Context


def register(commands: Any) -> None:
    """Add the domain subcommands."""
    parser = commands.add_parser("domain", help="hosted domains")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    add = actions.add_parser("add", help="host a new domain")
    add.add_argument("domain")
    add.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting (see 'mdmail domain show'); repeatable",
    )
    add.set_defaults(handler=add_domain)

    remove = actions.add_parser("remove", help="stop hosting a domain (archived)")
    remove.add_argument("domain")
    remove.add_argument(
        "--purge", action="store_true", help="delete the tree instead of archiving it"
    )
    remove.set_defaults(handler=remove_domain)

    listing = actions.add_parser("list", help="list hosted domains")
    listing.set_defaults(handler=list_domains)

    show = actions.add_parser("show", help="show a domain's settings and counts")
    show.add_argument("domain")
    show.set_defaults(handler=show_domain)

    change = actions.add_parser("set", help="change a domain's settings")
    change.add_argument("domain")
    change.add_argument("settings", nargs="+", metavar="KEY=VALUE")
    change.set_defaults(handler=set_domain)


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """Turn KEY=VALUE words into settings; values are read as YAML scalars."""
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise AdminError(f"{pair!r} is not KEY=VALUE")
        settings[key] = _scalar(key, value)
        if isinstance(settings[key], str) and key == "refused_senders":
            # One sender, several separated by commas, or none: always a list.
            settings[key] = [item.strip() for item in value.split(",") if item.strip()]
    return settings


def _scalar(key: str, value: str) -> Any:
    if not value:
        return ""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        raise AdminError(f"{key}: {value!r} is not a YAML value") from None


def add_domain(context: Context, args: argparse.Namespace) -> None:
    """Host a new domain."""
    tree = context.admin.add_domain(args.domain, parse_settings(args.set))
    context.emit(
        {"domain": tree.domain, "path": str(tree.path)},
        f"added {tree.domain} ({tree.path})",
    )


def remove_domain(context: Context, args: argparse.Namespace) -> None:
    """Stop hosting a domain."""
    archived = context.admin.remove_domain(args.domain, purge=args.purge)
    where = f"archived in {archived}" if archived else "purged"
    context.emit(
        {"domain": args.domain, "archive": archived}, f"removed {args.domain}: {where}"
    )


def list_domains(context: Context, args: argparse.Namespace) -> None:
    """List hosted domains and alias domains."""
    admin = context.admin
    domains = admin.domains()
    aliases = admin.domain_aliases()
    lines = [_label(domain) for domain in domains]
    lines += [
        f"{_label(alias)} -> {target} (alias domain)"
        for alias, target in sorted(aliases.items())
    ]
    context.emit({"domains": domains, "domain_aliases": aliases}, "\n".join(lines))


def _label(domain: str) -> str:
    shown = display_domain(domain)
    return domain if shown == domain else f"{domain} ({shown})"


def show_domain(context: Context, args: argparse.Namespace) -> None:
    """Show one domain."""
    admin = context.admin
    tree = admin.tree(args.domain)
    settings = schema.dump(admin.settings(tree.domain))
    data = {
        "domain": tree.domain,
        "display": display_domain(tree.domain),
        "path": str(tree.path),
        "accounts": len(admin.accounts(tree.domain)),
        "aliases": len(admin.aliases(tree.domain)),
        "settings": settings,
    }
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    context.emit(data, text)


def set_domain(context: Context, args: argparse.Namespace) -> None:
    """Change settings of a domain."""
    settings = context.admin.change_settings(args.domain, parse_settings(args.settings))
    context.emit(schema.dump(settings), f"changed {args.domain}")
