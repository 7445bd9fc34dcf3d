"""fsync through Linux native AIO (mdcore.kernelsync), and its thread fallback."""

import asyncio
import errno
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from mdcore import kernelsync
from mdcore.kernelsync import UNSUPPORTED, KernelSync, fsync_each

T = TypeVar("T")


def with_sync(tmp_path: Path, body: Callable[[KernelSync], Awaitable[T]]) -> T:
    """Run body with a KernelSync on a fresh loop; skip where the kernel has none."""

    async def run() -> T | None:
        sync = await KernelSync.open(tmp_path)
        if sync is None:
            return None
        try:
            return await body(sync)
        finally:
            sync.close()

    result = asyncio.run(run())
    if result is None:
        pytest.skip("no native AIO fsync on this kernel")
    return result


def open_files(folder: Path, count: int) -> list[int]:
    """count files in folder, each with a little written to it, open for writing."""
    fds = []
    for number in range(count):
        fd = os.open(folder / f"m{number}", os.O_CREAT | os.O_WRONLY, 0o600)
        os.write(fd, b"message\n")
        fds.append(fd)
    return fds


def test_files_and_a_folder_are_synced(tmp_path: Path) -> None:
    """Twenty files and their folder in one call: no error for any."""
    fds = open_files(tmp_path, 20)
    folder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)

    async def body(sync: KernelSync) -> list[OSError | None]:
        return await sync.fsync([*fds, folder])

    try:
        assert with_sync(tmp_path, body) == [None] * 21
    finally:
        for fd in (*fds, folder):
            os.close(fd)
    # The probe file is gone again.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"m{n}" for n in range(20)
    )


def test_errors_are_per_fd(tmp_path: Path) -> None:
    """A pipe cannot be fsynced (UNSUPPORTED), a closed fd is EBADF; others pass."""
    [good] = open_files(tmp_path, 1)
    reader, writer = os.pipe()
    # Far above any open fd (a closed low number is soon taken again).
    closed = 1 << 20

    async def body(sync: KernelSync) -> list[int | None]:
        errors = await sync.fsync([good, reader, closed])
        return [None if error is None else error.errno for error in errors]

    try:
        assert with_sync(tmp_path, body) == [None, UNSUPPORTED, errno.EBADF]
    finally:
        for fd in (good, reader, writer):
            os.close(fd)


def test_more_requests_than_the_context_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past CAPACITY in flight the rest wait their turn, and all complete."""
    monkeypatch.setattr(kernelsync, "CAPACITY", 4)
    fds = open_files(tmp_path, 30)

    async def body(sync: KernelSync) -> list[list[OSError | None]]:
        return list(await asyncio.gather(*(sync.fsync([fd]) for fd in fds)))

    try:
        assert with_sync(tmp_path, body) == [[None]] * 30
    finally:
        for fd in fds:
            os.close(fd)


def test_a_missing_probe_folder_uses_its_parent(tmp_path: Path) -> None:
    """The state root need not exist yet: the probe file goes one level up."""

    async def body(sync: KernelSync) -> bool:
        return True

    assert with_sync(tmp_path / "not" / "yet", body)
    assert list(tmp_path.iterdir()) == []


def test_fsync_each_reports_instead_of_raising(tmp_path: Path) -> None:
    """The thread fallback: one error per fd, in order."""
    [good] = open_files(tmp_path, 1)
    reader, writer = os.pipe()
    try:
        errors = fsync_each([good, reader])
    finally:
        for fd in (good, reader, writer):
            os.close(fd)
    assert errors[0] is None
    assert isinstance(errors[1], OSError) and errors[1].errno == errno.EINVAL
