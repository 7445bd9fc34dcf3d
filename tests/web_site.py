"""Shared set-up of the web page's tests: two domains, each with its own foo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mdcore.admin import Admin
from mdcore.config import ServerConfig, load_config
from mdcore.layout import StateRoot
from mdcore.passwords import hash_password

ABC, XYZ = "abc.example", "xyz.example"
ABC_HOST, XYZ_HOST = "mail.abc.example", "mail.xyz.example"
FOO_ABC_PASSWORD = "abc-foo-long-pass"
FOO_XYZ_PASSWORD = "xyz-foo-long-pass"
BOSS_PASSWORD = "abc-boss-long-pass"


def add_account(admin: Admin, domain: str, user: str, password: str) -> None:
    """An account whose hash checks fast (SHA512-CRYPT, not Argon2)."""
    stored = hash_password(password, "SHA512-CRYPT")
    admin.add_account(domain, user, stored, hashed=True)


def make_domains(root: StateRoot) -> Admin:
    """abc.example (admin boss, open registration) and xyz.example, each with foo."""
    admin = Admin(root)
    admin.add_domain(ABC, {"admins": ["boss"], "self_registration": True})
    admin.add_domain(XYZ, {"admins": ["foo"]})
    add_account(admin, ABC, "foo", FOO_ABC_PASSWORD)
    add_account(admin, ABC, "boss", BOSS_PASSWORD)
    add_account(admin, XYZ, "foo", FOO_XYZ_PASSWORD)
    return admin


def write_config(folder: Path, root: StateRoot, **web: Any) -> Path:
    """A config file for the web page over root, with a fast throttle."""
    settings = {"login_delay_base": 0.001, "login_delay_max": 0.002, **web}
    config = {
        "state_root": str(root.path),
        "web": settings,
        "log": {"level": "INFO", "file": str(folder / "server.log")},
    }
    path = folder / "mdmail.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def site_config(folder: Path, root: StateRoot, **web: Any) -> ServerConfig:
    """The loaded config of write_config."""
    return load_config(write_config(folder, root, **web))
