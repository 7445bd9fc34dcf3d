"""mdmail mta: Postfix and sendmail configuration and DNS records from the registry."""

import argparse
from pathlib import Path
from typing import Any

from mdcore.dns_records import DEFAULT_TTL, zone_lines
from mdcore.mtaconfig import HostedMail, collect
from mdcore.postfix_maps import (
    MAIN_FRAGMENT,
    MASTER_FRAGMENT,
    TABLES,
    MapType,
    PostfixOptions,
    parse_map_type,
    postfix_files,
)
from mdcore.sendmail_config import SendmailOptions, sendmail_files
from mdmail import mta
from mdmail.context import Context, positive_int

FRAGMENTS = {
    MAIN_FRAGMENT: "main.cf",
    MASTER_FRAGMENT: "master.cf",
    "mdmail.mc": "sendmail.mc (then rebuild sendmail.cf)",
}


def port(text: str) -> int:
    """argparse type for a TCP port."""
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError("a port is at most 65535")
    return value


def register(commands: Any) -> None:
    """Add the mta subcommands."""
    parser = commands.add_parser(
        "mta", help="generate MTA tables and DNS records from the registry"
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="MTA")

    postfix = actions.add_parser(
        "postfix", help="Postfix tables and main.cf/master.cf fragments"
    )
    _common(postfix)
    postfix.add_argument(
        "--map-type",
        default=MapType.TEXTHASH.value,
        metavar="TYPE",
        help="texthash (default), lmdb or hash; lmdb and hash run postmap",
    )
    postfix.add_argument(
        "--reload", action="store_true", help="run 'postfix reload' afterwards"
    )
    postfix.add_argument(
        "--postfix-config",
        metavar="DIR",
        help="Postfix's config folder for postmap and reload (default /etc/postfix)",
    )
    postfix.set_defaults(handler=postfix_command)

    sendmail = actions.add_parser(
        "sendmail", help="sendmail tables and an .mc fragment"
    )
    _common(sendmail)
    sendmail.add_argument(
        "--makemap",
        nargs="?",
        const="makemap",
        metavar="PROGRAM",
        help="build the .db files of mailertable and virtusertable",
    )
    sendmail.add_argument(
        "--sendmail-cf", metavar="FILE", help="sendmail.cf for makemap -C"
    )
    sendmail.set_defaults(handler=sendmail_command)

    dns = actions.add_parser("dns", help="print MX, A/AAAA and SPF records")
    dns.add_argument(
        "--ttl", type=positive_int, default=DEFAULT_TTL, help="seconds (default 3600)"
    )
    dns.set_defaults(handler=dns_command)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", required=True, metavar="DIR", help="folder for the files"
    )
    parser.add_argument(
        "--lmtp",
        metavar="SPEC",
        default="",
        help="deliver to unix:/path or inet:ADDRESS:PORT (default: first lmtp.listen)",
    )
    parser.add_argument(
        "--smtp-port",
        type=port,
        default=25,
        metavar="PORT",
        help="port of the per-domain SMTP listeners (default 25)",
    )
    parser.add_argument(
        "--milter", action="store_true", help="use mdmail's milter (config milter:)"
    )


def _collect(context: Context, args: argparse.Namespace) -> HostedMail:
    return collect(context.admin, context.config, args.lmtp)


def postfix_command(context: Context, args: argparse.Namespace) -> None:
    """Write the Postfix tables and fragments; postmap and reload as asked."""
    map_type = parse_map_type(args.map_type)
    config_dir = Path(args.postfix_config) if args.postfix_config else None
    options = PostfixOptions(
        directory=Path(args.output).resolve(),
        map_type=map_type,
        queue_directory=mta.postfix_queue_directory(config_dir),
        smtp_port=args.smtp_port,
        milter=args.milter,
    )
    written = mta.write_files(
        options.directory, postfix_files(_collect(context, args), options)
    )

    indexed = []
    if map_type.needs_postmap:
        for item in written:
            if item.path.name in TABLES and _needs_index(item.path, map_type):
                indexed.append(mta.postmap(map_type, item.path, config_dir))
    if args.reload:
        mta.postfix_reload(config_dir)
    notes = _notes(written, map_type, args.reload)
    _report(
        context, written, indexed, notes + (["Postfix reloaded"] if args.reload else [])
    )


def _needs_index(path: Path, map_type: MapType) -> bool:
    """Whether postmap's file is missing or older than the text (a failed run)."""
    suffix = {MapType.LMDB: ".lmdb", MapType.HASH: ".db"}[map_type]
    index = path.with_name(path.name + suffix)
    return not index.exists() or index.stat().st_mtime_ns < path.stat().st_mtime_ns


def sendmail_command(context: Context, args: argparse.Namespace) -> None:
    """Write the sendmail tables and .mc fragment; makemap as asked."""
    options = SendmailOptions(
        directory=Path(args.output).resolve(),
        smtp_port=args.smtp_port,
        milter=args.milter,
    )
    written = mta.write_files(
        options.directory, sendmail_files(_collect(context, args), options)
    )
    indexed = []
    if args.makemap:
        cf = Path(args.sendmail_cf) if args.sendmail_cf else None
        for name in ("mailertable", "virtusertable"):
            indexed.append(mta.makemap(args.makemap, cf, options.directory / name))
    _report(context, written, indexed, _notes(written, None, reloaded=False))


def dns_command(context: Context, args: argparse.Namespace) -> None:
    """Print the zone-file lines of every domain."""
    mail = collect(context.admin, context.config)
    text = zone_lines(mail, args.ttl)
    context.emit({"zone": text}, text.rstrip("\n"))


def _notes(
    written: list[mta.Written], map_type: MapType | None, reloaded: bool
) -> list[str]:
    """What the admin still has to do by hand."""
    changed = {item.path.name for item in written if item.changed}
    notes = [
        f"{name} changed: merge it into {target}"
        for name, target in FRAGMENTS.items()
        if name in changed
    ]
    if "aliases" in changed:
        notes.append("aliases changed: run newaliases")
    if map_type is MapType.TEXTHASH and changed & set(TABLES) and not reloaded:
        notes.append("texthash tables changed: run 'postfix reload' (or pass --reload)")
    return notes


def _report(
    context: Context, written: list[mta.Written], indexed: list[str], notes: list[str]
) -> None:
    lines = [
        f"{item.path}: {'written' if item.changed else 'unchanged'}" for item in written
    ]
    lines += [f"indexed {table}" for table in indexed]
    data = {
        "files": [{"path": str(w.path), "changed": w.changed} for w in written],
        "indexed": indexed,
        "notes": notes,
    }
    context.emit(data, "\n".join(lines + notes))
