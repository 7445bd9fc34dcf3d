"""mdmail demo: two domains sharing a user name, on embedded defaults.

The demo builds its own state root (demo-state/ in the current folder), starts the
LMTP server in this process on a unix socket inside it, and walks mail for
foo@abc.example and foo@xyz.example through it into two different Maildirs. Then
it starts the POP3 proxy on two loopback addresses, one per domain (127.0.0.2 for
abc.example, 127.0.0.3 for xyz.example), and fetches each mailbox as plain `foo`,
the way an unmodified client would. No external service is needed.
"""

import asyncio
import poplib
import shutil
import smtplib
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

from lmtpd.server import LmtpServer
from mdcore.admin import Admin
from mdcore.config import DomainBinding, ServerConfig
from mdcore.errors import AdminError
from mdcore.listeners import SocketOwner, open_listeners
from mdcore.mailbox_reader import list_messages
from mdcore.namespace import Registry
from mdcore.passwords import verify_password
from mdcore.resolve import resolve
from mdmail.context import Context
from pop3proxy.server import Pop3Server

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

# One loopback address per domain: what pop.abc.example and pop.xyz.example would
# resolve to on a real server (all of 127.0.0.0/8 is loopback on Linux).
POP3_ADDRESSES = (
    ("127.0.0.2", "abc.example", "abc-secret"),
    ("127.0.0.3", "xyz.example", "xyz-secret"),
)


def run(context: Context) -> None:
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
    fetch_over_pop3(context.config, say)


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


def fetch_over_pop3(config: ServerConfig, say: Any) -> None:
    """Serve POP3 on one loopback address per domain and log in as plain foo."""
    bindings = tuple(
        DomainBinding(domain=domain, addresses=(address,))
        for address, domain, _ in POP3_ADDRESSES
    )
    # The wrong-password probe below should not make the demo wait long.
    pop3 = replace(config.pop3, login_delay_base=0.1, login_delay_max=0.2)
    config = replace(config, hostname="pop.demo.example", domains=bindings, pop3=pop3)
    say("\n6. Fetching over POP3, one address per domain, logging in as plain foo:\n")
    asyncio.run(_pop3_sessions(config, say))


async def _pop3_sessions(config: ServerConfig, say: Any) -> None:
    sockets = [_listen(address) for address, _, _ in POP3_ADDRESSES]
    ports = [sock.getsockname()[1] for sock in sockets]
    server = Pop3Server(config)
    await server.start(plain=sockets, implicit=[])
    try:
        await asyncio.to_thread(_fetch_all, ports, say)
    finally:
        await server.stop(grace=5)


def _listen(address: str) -> socket.socket:
    # A free port picked by the kernel: the demo must not need port 110 or root.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, 0))
    sock.listen()
    return sock


def _fetch_all(ports: list[int], say: Any) -> None:
    for (address, domain, password), port in zip(POP3_ADDRESSES, ports, strict=True):
        say(f"  {address}:{port} ({domain}), USER foo, PASS {password}:\n")
        for line in _fetch(address, port, password):
            say(f"    {line}\n")
    address, port = POP3_ADDRESSES[1][0], ports[1]
    say(f"  {address}:{port}, USER foo, PASS abc-secret (abc's password):\n")
    for line in _fetch(address, port, "abc-secret"):
        say(f"    {line}\n")


def _fetch(address: str, port: int, password: str) -> list[str]:
    """Log in as foo, list and read every message, keep them (no DELE)."""
    client = poplib.POP3(address, port, timeout=30)
    try:
        client.user("foo")
        client.pass_(password)
        count, size = client.stat()
        lines = [f"+OK logged in: {count} message(s), {size} octets"]
        for number in range(1, count + 1):
            _, body, _ = client.retr(number)
            subject = _subject(b"\n".join(body))
            lines.append(f"RETR {number}: {subject}")
        client.quit()
        return lines
    except poplib.error_proto as error:
        return [error.args[0].decode("utf-8", "replace")]
    finally:
        client.close()
