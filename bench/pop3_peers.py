"""The POP3 servers the benchmark compares, given the same accounts and Maildirs.

Our proxy runs as `mdmail --config CFG serve pop3`; Dovecot as a private
instance serving POP3 only, its login process in high-performance mode. Both
store the same password hash for an account, and each Maildir is filled once
(in our tree, named as our LMTP server names files) and copied to Dovecot's.
"""

import os
import random
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
from peers import (
    HOST,
    MAIL_UID,
    START_SECONDS,
    DovecotPeer,
    Mailbox,
    OursPeer,
    make_maildir,
    wait_for_port,
)

from mdcore.maildir import unique_name
from mdcore.passwords import hash_password

DOMAIN = "bench.test"
PASSWORD = "bench-secret"
# Dovecot's own default cost for BLF-CRYPT: a cheap but real hash.
BCRYPT_COST = 5
LINE_POOL = 2000


def stored_hash(scheme: str) -> str:
    """The stored form of PASSWORD in a scheme both servers verify."""
    if scheme == "BLF-CRYPT":
        salt = bcrypt.gensalt(rounds=BCRYPT_COST)
        return "{BLF-CRYPT}" + bcrypt.hashpw(PASSWORD.encode(), salt).decode()
    if scheme == "PLAIN":
        return "{PLAIN}" + PASSWORD
    return hash_password(PASSWORD, scheme)


@dataclass(frozen=True)
class Account:
    """A mailbox, its stored hash, and the sizes of the messages it holds."""

    mailbox: Mailbox
    stored: str
    sizes: tuple[int, ...] = field(repr=False)

    @property
    def login(self) -> str:
        """The name both servers take at USER: local@domain."""
        return self.mailbox.address


class MessageMaker:
    """Plain-text messages of a given size, made from a pool of random lines."""

    def __init__(self, seed: int = 1939) -> None:
        """Make the pool once; one line in 40 starts with a dot (stuffed on RETR)."""
        rng = random.Random(seed)
        letters = "abcdefghijklmnopqrstuvwxyz     "
        self.rng = rng
        self.lines = [
            ("." if index % 40 == 0 else "")
            + "".join(rng.choices(letters, k=rng.randint(20, 76)))
            for index in range(LINE_POOL)
        ]

    def make(self, number: int, size: int) -> bytes:
        """A message of about `size` bytes (LF line ends)."""
        header = (
            "Return-Path: <sender@source.test>\n"
            f"From: Sender <sender@source.test>\nTo: user@{DOMAIN}\n"
            f"Subject: benchmark message {number}\n"
            f"Message-ID: <{number}.{self.rng.getrandbits(32)}@source.test>\n\n"
        )
        body: list[str] = []
        length = len(header)
        while length < size:
            line = self.rng.choice(self.lines)
            body.append(line)
            length += len(line) + 1
        return (header + "\n".join(body) + "\n").encode()


def fill_maildir(maildir: Path, account: Account, maker: MessageMaker) -> None:
    """Write the account's messages into new/, named with S= and W= sizes."""
    for number, size in enumerate(account.sizes, start=1):
        data = maker.make(number, size)
        vsize = len(data) + data.count(b"\n")
        (maildir / "new" / unique_name(len(data), vsize)).write_bytes(data)


def copy_messages(source: Path, target: Path, uid: int) -> None:
    """Copy the message files of one Maildir into another, owned by uid."""
    for entry in os.scandir(source / "new"):
        copied = target / "new" / entry.name
        shutil.copyfile(entry.path, copied)
        os.chown(copied, uid, uid)


DOVECOT_POP3_CONF = """\
base_dir = {base}/run
state_dir = {base}/state
instance_name = pop3bench{port}
protocols = pop3
listen = {host}
log_path = {base}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = {base}/users
}}
userdb {{
  driver = passwd-file
  args = {base}/users
}}
mail_location = maildir:~/Maildir
service pop3-login {{
  inet_listener pop3 {{
    address = {host}
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
  # High-performance mode: each login process serves many connections.
  service_count = 0
  process_min_avail = {cpus}
}}
"""


class DovecotPop3(DovecotPeer):
    """A private Dovecot serving POP3 only; mail owned by nobody."""

    def __init__(self, base: Path, accounts: Sequence[Account], binary: str) -> None:
        """Nothing is written until prepare() or start()."""
        super().__init__(base, [account.mailbox for account in accounts], binary)
        self.accounts = list(accounts)

    def _write_files(self) -> None:
        for folder in ("run", "state", "mail"):
            (self.base / folder).mkdir(parents=True, exist_ok=True)
        text = DOVECOT_POP3_CONF.format(
            base=self.base, host=HOST, port=self.port, cpus=os.cpu_count() or 1
        )
        self.conf.write_text(text)
        users = [self._account_line(account) for account in self.accounts]
        (self.base / "users").write_text("".join(users))
        for account in self.accounts:
            make_maildir(self.maildir(account.mailbox), MAIL_UID)
        os.chown(self.base / "mail", MAIL_UID, MAIL_UID)

    def _account_line(self, account: Account) -> str:
        home = self.maildir(account.mailbox).parent
        uid = MAIL_UID
        return f"{account.login}:{account.stored}:{uid}:{uid}::{home}::\n"

    def prepare(self, source: "OursPop3") -> None:
        """Write config and users, then copy every Maildir from our tree."""
        self._write_files()
        for account in self.accounts:
            ours = source.maildir(account.mailbox)
            copy_messages(ours, self.maildir(account.mailbox), MAIL_UID)

    def restart(self) -> None:
        """Stop the instance and start a fresh one on the same files."""
        self.stop()
        self._master = 0
        self.start()


OURS_POP3_CONF = """\
state_root: {state}
hostname: bench.test
pop3:
  listen: [inet:{host}:{port}]
  max_sessions: 5000
  max_sessions_per_client: 5000
log:
  level: INFO
  file: {base}/pop3proxy.log
"""


class OursPop3(OursPeer):
    """Our POP3 proxy on a state root of its own, logging logins at INFO."""

    def __init__(self, base: Path, accounts: Sequence[Account], mdmail: str) -> None:
        """Nothing is written until prepare()."""
        super().__init__(base, [account.mailbox for account in accounts], mdmail)
        self.accounts = list(accounts)

    def prepare(self, maker: MessageMaker) -> None:
        """Create the domain and accounts, fill the Maildirs, write the config."""
        self.base.mkdir(parents=True, exist_ok=True)
        self.admin.add_domain(DOMAIN)
        for account in self.accounts:
            local = account.mailbox.local
            self.admin.add_account(DOMAIN, local, account.stored, hashed=True)
            fill_maildir(self.maildir(account.mailbox), account, maker)
        text = OURS_POP3_CONF.format(
            state=self.base / "state", host=HOST, port=self.port, base=self.base
        )
        (self.base / "mdmail.yaml").write_text(text)

    def start(self) -> None:
        """Start `mdmail serve pop3` and wait until it listens."""
        config = self.base / "mdmail.yaml"
        command = [self.mdmail, "--config", str(config), "serve", "pop3"]
        with open(self.base / "server.log", "ab") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        wait_for_port(self.port, self, START_SECONDS)

    def restart(self) -> None:
        """Stop the process and start a fresh one on the same state root."""
        self.stop()
        self.start()


def accounts_named(
    prefix: str, count: int, stored: str, sizes: tuple[int, ...]
) -> Iterator[Account]:
    """`count` accounts prefix0, prefix1, ... sharing a hash and message sizes."""
    for index in range(count):
        yield Account(Mailbox(f"{prefix}{index}", DOMAIN), stored, sizes)
