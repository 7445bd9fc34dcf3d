"""Shared fixtures: a fresh state root and the admin API on it."""

from pathlib import Path

import pytest

from mdcore.admin import Admin
from mdcore.layout import StateRoot
from mdcore.maildir import MailboxTarget, StagedMessage, deliver
from mdcore.namespace import Registry

# A BLF-CRYPT hash of "secret" at the lowest cost: tests that create many accounts
# store it as it is (hashed=True) instead of paying for Argon2 each time.
SECRET_HASH = "{BLF-CRYPT}$2b$04$vqvX6VlmOlDjr6T7O1FK6OkvkXS5Y3FzRlKfQvj5Swv55/EN2ZF8e"


@pytest.fixture
def root(tmp_path: Path) -> StateRoot:
    """An empty state root."""
    return StateRoot(tmp_path / "state")


@pytest.fixture
def admin(root: StateRoot) -> Admin:
    """The admin API on the empty state root."""
    return Admin(root)


@pytest.fixture
def registry(root: StateRoot) -> Registry:
    """A registry that re-checks the serial file on every lookup."""
    return Registry(root, refresh_interval=0.0)


pytest_plugins = ["tests.lmtp_process"]
pytest_plugins.append("tests.mta")


def deliver_message(maildir: Path, address: str, message: bytes) -> None:
    """Put one message into a Maildir the way lmtpd does: staged, then linked."""
    staged = StagedMessage(maildir / "tmp")
    try:
        staged.write(message)
        staged.commit()
        deliver(staged, [MailboxTarget(maildir, address, None)])
    finally:
        staged.abort()
