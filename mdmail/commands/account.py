"""mdmail account: add, remove, passwd, quota, list and show accounts."""

import argparse
from dataclasses import asdict
from typing import Any

from mdcore.accounts import Account
from mdmail.context import (
    Context,
    parse_size,
    positive_int,
    read_password,
    split_address,
)


def register(commands: Any) -> None:
    """Add the account subcommands."""
    parser = commands.add_parser("account", help="accounts of a domain")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    add = actions.add_parser(
        "add", help="create an account (password from a prompt or stdin)"
    )
    add.add_argument("address", help="user@domain")
    _quota_options(add)
    add.set_defaults(handler=add_account)

    remove = actions.add_parser("remove", help="remove an account (mail archived)")
    remove.add_argument("address")
    remove.add_argument("--purge", action="store_true", help="delete the mail too")
    remove.set_defaults(handler=remove_account)

    passwd = actions.add_parser(
        "passwd", help="set a new password (from a prompt or stdin)"
    )
    passwd.add_argument("address")
    passwd.set_defaults(handler=change_password)

    quota = actions.add_parser("quota", help="set an account's quota")
    quota.add_argument("address")
    _quota_options(quota)
    quota.add_argument("--unlimited", action="store_true", help="remove the quota")
    quota.set_defaults(handler=set_quota)

    listing = actions.add_parser("list", help="list a domain's accounts")
    listing.add_argument("domain")
    listing.set_defaults(handler=list_accounts)

    show = actions.add_parser("show", help="show one account")
    show.add_argument("address")
    show.set_defaults(handler=show_account)


def _quota_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quota-bytes",
        type=parse_size,
        metavar="SIZE",
        help="storage quota, e.g. 500M or 2G",
    )
    parser.add_argument(
        "--quota-messages", type=positive_int, metavar="N", help="message count quota"
    )


def _public(account: Account) -> dict[str, Any]:
    data = asdict(account)
    data["password"] = account.password.split("}", 1)[0] + "}..."
    data["extra"] = dict(account.extra)
    return data


def _describe(account: Account, domain: str) -> str:
    quota = []
    if account.quota_bytes:
        quota.append(f"{account.quota_bytes} bytes")
    if account.quota_messages:
        quota.append(f"{account.quota_messages} messages")
    limits = ", ".join(quota) or "no quota"
    return f"{account.name}@{domain} [{account.state}] {limits}"


def add_account(context: Context, args: argparse.Namespace) -> None:
    """Create an account."""
    local, domain = split_address(args.address)
    context.admin.tree(domain)
    account = context.admin.add_account(
        domain, local, read_password(), args.quota_bytes, args.quota_messages
    )
    context.emit(_public(account), f"added {account.name}@{domain}")


def remove_account(context: Context, args: argparse.Namespace) -> None:
    """Remove an account."""
    local, domain = split_address(args.address)
    archived = context.admin.remove_account(domain, local, purge=args.purge)
    where = f"mail archived in {archived}" if archived else "mail deleted"
    context.emit(
        {"address": args.address, "archive": archived},
        f"removed {args.address}: {where}",
    )


def change_password(context: Context, args: argparse.Namespace) -> None:
    """Set a new password."""
    local, domain = split_address(args.address)
    context.admin.account(domain, local)
    account = context.admin.set_password(domain, local, read_password())
    context.emit(_public(account), f"password changed for {account.name}@{domain}")


def set_quota(context: Context, args: argparse.Namespace) -> None:
    """Set or clear an account's quota."""
    local, domain = split_address(args.address)
    if args.unlimited:
        changes = {"quota_bytes": None, "quota_messages": None}
    else:
        changes = {
            "quota_bytes": args.quota_bytes,
            "quota_messages": args.quota_messages,
        }
        changes = {key: value for key, value in changes.items() if value is not None}
    account = context.admin.update_account(domain, local, **changes)
    context.emit(_public(account), _describe(account, domain))


def list_accounts(context: Context, args: argparse.Namespace) -> None:
    """List a domain's accounts."""
    tree = context.admin.tree(args.domain)
    accounts = context.admin.accounts(tree.domain)
    context.emit(
        [_public(account) for account in accounts],
        "\n".join(_describe(account, tree.domain) for account in accounts),
    )


def show_account(context: Context, args: argparse.Namespace) -> None:
    """Show one account."""
    local, domain = split_address(args.address)
    account = context.admin.account(domain, local)
    tree = context.admin.tree(domain)
    data = _public(account) | {"maildir": str(tree.maildir(account.name))}
    context.emit(data, _describe(account, domain) + f"\nmaildir: {data['maildir']}")
