"""Atomic file replacement and the locks that serialise changes.

A change is written to a temporary file in the same folder, flushed to disk and renamed
over the old file, then the folder itself is flushed: a crash at any moment leaves the
old file or the new one, never a mix.
"""

import fcntl
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write(
    path: Path,
    data: bytes | str,
    mode: int = 0o640,
    uid: int | None = None,
    gid: int | None = None,
) -> None:
    """Replace path with data so that readers see the old or the new file whole."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        _write_all(fd, payload)
        os.fsync(fd)
        if uid is not None or gid is not None:
            os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
    except BaseException:
        os.close(fd)
        temporary.unlink(missing_ok=True)
        raise
    os.close(fd)

    os.replace(temporary, path)
    fsync_dir(path.parent)


def _write_all(fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries to disk, so a rename or link in it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on path (created if missing) for the block.

    flock() locks are released by the kernel when the holder dies, so a kill -9 in
    the middle of a change never leaves a stale lock behind.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def bump_serial(path: Path) -> None:
    """Rewrite the change serial file so running servers notice a change."""
    atomic_write(path, f"{os.getpid()}.{secrets.token_hex(8)}\n", mode=0o644)
