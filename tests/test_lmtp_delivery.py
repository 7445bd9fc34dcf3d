"""Deliverer.finish() step by step: nothing is linked before the body is
fsynced, and no reply comes before the new/ folders are (a 250 only after
fsync, whichever way the server runs the fsyncs)."""

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from lmtpd.delivery import Blocking, Deliverer, Steps, Sync, Transaction
from lmtpd.replies import Reply
from mdcore.admin import Admin
from mdcore.config import ServerConfig
from mdcore.metrics import Metrics, hosted_in
from mdcore.namespace import Registry
from tests.conftest import SECRET_HASH

RECIPIENTS = ["foo@abc.example", "bar@abc.example"]


@pytest.fixture
def deliverer(tmp_path: Path) -> Deliverer:
    """A Deliverer over a state root with foo and bar in abc.example."""
    config = ServerConfig(state_root=tmp_path / "state")
    admin = Admin(config.root)
    admin.add_domain("abc.example")
    for address in RECIPIENTS:
        local = address.split("@")[0]
        admin.add_account("abc.example", local, SECRET_HASH, hashed=True)
    registry = Registry(config.root)
    return Deliverer(config, registry, Metrics(hosted_in(registry)))


def staged_transaction(deliverer: Deliverer, recipients: list[str]) -> Transaction:
    """A transaction with its recipients accepted and its body staged."""
    txn = Transaction("Q1", "sender@outside.example")
    for address in recipients:
        reply, _ = deliverer.check_recipient(txn, address, None)
        assert reply.code == 250
    deliverer.open_body(txn)
    assert txn.staged is not None
    txn.staged.write(b"Subject: x\r\n\r\nbody\r\n", crlf_only=True)
    return txn


def new_files(deliverer: Deliverer, address: str) -> list[str]:
    """The names in an account's new/."""
    local, _, domain = address.partition("@")
    return os.listdir(deliverer.config.root.tree(domain).maildir(local) / "new")


def drive(steps: Steps, on_sync: Callable[[Sync], list[OSError | None]]) -> list[Reply]:
    """Run the steps here: Sync by on_sync, Blocking at once; the replies."""
    try:
        step = steps.send(None)
        while True:
            if isinstance(step, Sync):
                step = steps.send(on_sync(step))
            else:
                assert isinstance(step, Blocking)
                step = steps.send(step.run())
    except StopIteration as done:
        replies: list[Reply] = done.value
        return replies


def test_link_after_body_fsync_and_reply_after_folder_fsync(
    deliverer: Deliverer,
) -> None:
    """First Sync: the staged file, nothing in new/ yet; second: the new/
    folder, the message there; the replies only after both came back."""
    txn = staged_transaction(deliverer, RECIPIENTS)
    seen: list[tuple[list[str], list[str]]] = []

    def on_sync(step: Sync) -> list[OSError | None]:
        targets = [os.readlink(f"/proc/self/fd/{fd}") for fd in step.fds]
        seen.append((targets, new_files(deliverer, "foo@abc.example")))
        for fd in step.fds:
            os.fsync(fd)
        return [None] * len(step.fds)

    replies = drive(deliverer.finish(txn, None), on_sync)

    [(body, before), (folders, after)] = seen
    staging = str(deliverer.config.root.staging)
    assert len(body) == 1 and body[0].startswith(staging) and before == []
    maildirs = {str(deliverer.config.root.tree("abc.example").maildir("foo"))}
    maildirs.add(str(deliverer.config.root.tree("abc.example").maildir("bar")))
    assert sorted(folders) == sorted(f"{maildir}/new" for maildir in maildirs)
    assert len(after) == 1
    assert [reply.code for reply in replies] == [250, 250]


def test_failed_folder_fsync_defers_and_takes_the_message_back(
    deliverer: Deliverer,
) -> None:
    """EIO from the new/ folder's fsync: 4xx for that recipient, and its new/
    is empty again; the other recipient, whose folder synced, gets its 250."""
    txn = staged_transaction(deliverer, RECIPIENTS)
    foo_new = str(deliverer.config.root.tree("abc.example").maildir("foo") / "new")

    def on_sync(step: Sync) -> list[OSError | None]:
        targets = [os.readlink(f"/proc/self/fd/{fd}") for fd in step.fds]
        return [
            OSError(errno.EIO, "Input/output error") if target == foo_new else None
            for target in targets
        ]

    replies = drive(deliverer.finish(txn, None), on_sync)

    assert [(reply.code, reply.enhanced) for reply in replies] == [
        (451, "4.3.0"),
        (250, "2.0.0"),
    ]
    assert new_files(deliverer, "foo@abc.example") == []
    assert len(new_files(deliverer, "bar@abc.example")) == 1
