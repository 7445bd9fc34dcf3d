"""What every subcommand is handed: the configuration, the admin API and the output."""

import argparse
import getpass
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from mdcore.admin import Admin
from mdcore.config import ServerConfig, find_config, load_config
from mdcore.errors import AdminError
from mdcore.names import parse_address


@dataclass
class Context:
    """The state a subcommand works on."""

    config: ServerConfig
    as_json: bool
    out: TextIO = sys.stdout

    @property
    def admin(self) -> Admin:
        """The admin API on the configured state root."""
        return Admin(self.config.root)

    def emit(self, data: Any, text: str) -> None:
        """Print data as JSON with --json, else the text for people."""
        if self.as_json:
            json.dump(data, self.out, indent=2, sort_keys=True, default=str)
            self.out.write("\n")
        elif text:
            self.out.write(text if text.endswith("\n") else text + "\n")


def make_context(args: argparse.Namespace) -> Context:
    """Build the context from the common options."""
    path = find_config(args.config)
    config = load_config(path) if path is not None else ServerConfig()
    state_root = args.state_root or getattr(args, "default_state_root", None)
    if state_root:
        config = _with_state_root(config, Path(state_root))
    elif path is None:
        raise AdminError(
            "no configuration: pass --config FILE or --state-root DIR "
            "(or set MDMAIL_CONFIG)"
        )
    return Context(config=config, as_json=args.json)


def _with_state_root(config: ServerConfig, path: Path) -> ServerConfig:
    return replace(config, state_root=path.resolve())


def split_address(text: str) -> tuple[str, str]:
    """Split user@domain given on the command line into (local part, domain)."""
    address = parse_address(text)
    return address.local, address.domain


def read_password(prompt: str = "Password: ") -> str:
    """Read a new password: twice from the terminal, or one line from stdin."""
    if sys.stdin.isatty():
        first = getpass.getpass(prompt)
        if first != getpass.getpass("Again: "):
            raise AdminError("the two passwords differ")
        password = first
    else:
        password = _read_line()
    if not password:
        raise AdminError("empty password")
    # Dovecot compares UTF-8 bytes and reads C strings: no stored hash could match
    # a password with a NUL byte or one that is not UTF-8 text.
    if "\0" in password:
        raise AdminError("a password may not hold a NUL byte")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        raise AdminError("the password is not UTF-8 text") from None
    return password


def _read_line() -> str:
    try:
        return sys.stdin.readline().rstrip("\r\n")
    except UnicodeDecodeError:
        raise AdminError("the password is not UTF-8 text") from None


_UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """Parse a size such as 500M or 2G (powers of 1024) into bytes."""
    unit = text[-1:].upper()
    try:
        value = int(text[:-1]) * _UNITS[unit] if unit in _UNITS else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 500M") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("a size must be greater than 0")
    return value


def positive_int(text: str) -> int:
    """argparse type for a whole number above 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value
