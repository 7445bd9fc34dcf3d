"""mdmail demo: two domains sharing a user name, on embedded defaults.

The demo builds its own state root (demo-state/ in the current folder), starts the
LMTP server in this process on a unix socket inside it, and walks mail for
foo@abc.example and foo@xyz.example through it into two different Maildirs. No
external service is needed.
"""

import argparse
import asyncio
import shutil
import smtplib
from dataclasses import replace
from pathlib import Path
from typing import Any

from lmtpd.server import LmtpServer
from mdcore.admin import Admin
from mdcore.config import ServerConfig
from mdcore.errors import AdminError
from mdcore.listeners import SocketOwner, open_listeners
from mdcore.mailbox_reader import list_messages
from mdcore.namespace import Registry
from mdcore.passwords import verify_password
from mdcore.resolve import resolve
from mdmail.context import Context

DEMO_ROOT = "demo-state"
DEMO_MARKER = ".mdmail-demo"

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

SENDER = "sender@elsewhere.example"
MESSAGES = (
    ("foo@abc.example", "Hello foo at ABC", "Quarterly figures attached."),
    ("foo@xyz.example", "Hello foo at XYZ", "Your XYZ newsletter."),
    ("sales@abc.example", "Sales enquiry", "To the sales alias: foo and bar."),
)


def register(commands: Any) -> None:
    """Add the demo subcommand."""
    parser = commands.add_parser(
        "demo", help="build two demo domains and send mail through the LMTP server"
    )
    parser.set_defaults(handler=demo_command, default_state_root=DEMO_ROOT)


def demo_command(context: Context, args: argparse.Namespace) -> None:
    """Build the demo state from scratch and walk through it."""
    root = context.config.root
    _reset_demo_root(root.path)
    say = context.out.write
    say(f"Demo state root: {root.path}\n\n")

    build_domains(context.admin, say)
    registry = Registry(root)
    show_resolution(registry, say)
    show_passwords(registry, say)
    deliver_through_lmtp(context.config, say)
    show_mailboxes(context.admin, say)


def _reset_demo_root(path: Path) -> None:
    # The demo starts from scratch, but never wipes a folder it did not make.
    marker = path / DEMO_MARKER
    if path.exists() and any(path.iterdir()) and not marker.exists():
        raise AdminError(f"{path} exists and is not a demo state root; not touching it")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    marker.write_text("made by mdmail demo\n")


def build_domains(admin: Admin, say: Any) -> None:
    """Two domains, each with its own foo, plus aliases of every kind."""
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
    say("1. Two domains, each with its own tree and its own user foo:\n")
    for domain in admin.domains():
        tree = admin.tree(domain)
        say(f"  {domain}: {tree.path}\n")
        for account in admin.accounts(domain):
            say(f"    account {account.name}: {tree.maildir(account.name)}\n")
        for name, targets in admin.aliases(domain).items():
            say(f"    alias {name} -> {', '.join(targets)}\n")
    say("  alias domain old-xyz.example -> xyz.example\n\n")


def show_resolution(registry: Registry, say: Any) -> None:
    """How addresses resolve, through the one function every component uses."""
    say("2. How addresses resolve (one function, used by every component):\n")
    for address in ADDRESSES:
        result = resolve(registry, address)
        mailboxes = [f"{box.account}@{box.domain}" for box in result.mailboxes]
        found = mailboxes + list(result.external)
        shown = f" -> {', '.join(found)}" if found else ""
        say(f"  {address:24} {result.outcome.value}{shown}\n")
    say("\n")


def show_passwords(registry: Registry, say: Any) -> None:
    """The same user name and password in two domains: two different people."""
    say("3. Same user name, two people:\n")
    for domain in ("abc.example", "xyz.example"):
        namespace = registry.namespace(domain)
        stored = namespace.account("foo") if namespace else None
        ok = verify_password(stored.password if stored else None, "abc-secret")
        verdict = "accepted" if ok else "refused"
        say(f"  foo@{domain} with password 'abc-secret': {verdict}\n")
    say("\n")


def deliver_through_lmtp(config: ServerConfig, say: Any) -> None:
    """Start the LMTP server on a unix socket in the state root and send mail."""
    path = config.root.path / "lmtp.sock"
    config = replace(config, hostname="mx.demo.example")
    say(f"4. Delivering over LMTP (unix socket {path}):\n")
    asyncio.run(_lmtp_session(config, path, say))
    say("\n")


async def _lmtp_session(config: ServerConfig, path: Any, say: Any) -> None:
    sockets = open_listeners((f"unix:{path}",), SocketOwner(mode=0o600))
    server = LmtpServer(config)
    await server.start(sockets)
    try:
        await asyncio.to_thread(_send_messages, str(path), say)
    finally:
        await server.stop(grace=5)


def _send_messages(path: str, say: Any) -> None:
    for recipient, subject, body in MESSAGES:
        client = smtplib.LMTP(path)
        try:
            client.ehlo("demo.example")
            message = f"From: {SENDER}\r\nSubject: {subject}\r\n\r\n{body}\r\n"
            client.sendmail(SENDER, [recipient], message.encode())
            say(f"  {recipient:20} 250 accepted: {subject}\n")
        except (OSError, smtplib.SMTPException) as error:
            say(f"  {recipient:20} refused: {error}\n")
        finally:
            client.close()


def show_mailboxes(admin: Admin, say: Any) -> None:
    """What each foo's Maildir now holds."""
    say("5. The mailboxes afterwards (two spools, one user name):\n")
    for domain in admin.domains():
        for account in admin.accounts(domain):
            maildir = admin.tree(domain).maildir(account.name)
            messages = list_messages(maildir)
            say(f"  {account.name}@{domain}: {len(messages)} message(s)\n")
            for info in messages:
                subject = _subject(info.path.read_bytes())
                say(f"    {info.path.name}  {info.vsize} octets  {subject}\n")


def _subject(data: bytes) -> str:
    for line in data.split(b"\n"):
        if not line.strip():
            break
        if line.lower().startswith(b"subject:"):
            return line[8:].strip().decode("utf-8", "replace")
    return ""
