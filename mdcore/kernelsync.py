"""fsync(2) for an event loop without threads: Linux native AIO (io_submit(2)).

Since Linux 4.18 an IOCB_CMD_FSYNC request runs the fsync in a kernel worker
and signals its end on an eventfd, which the loop watches like a socket. A
delivery's fsyncs then cost the loop a few system calls and no thread: the
fsyncs of one step (the new/ folders of ten recipients, say) go to the kernel
in one io_submit call, and one eventfd read and io_getevents call collect all
that have finished. With Python threads every fsync meant waking one, and that
thread and the loop passing the GIL to each other (about sixty futex calls a
message, strace -c).

The fsync itself then runs in a kernel worker, so its CPU time is not charged
to this process: compare CPU per message with a server that fsyncs in its own
threads knowing that.

Only fsync is asked for, so no buffer of ours is ever lent to the kernel: the
request blocks are read by io_submit and copied, and the completions are
written into an array we own for the length of one io_getevents call.
Where the kernel refuses (ENOSYS, EINVAL on a kernel before 4.18, seccomp),
`KernelSync.open()` returns None and callers keep their threads; a filesystem
without fsync for AIO answers EINVAL per request (`UNSUPPORTED`), which callers
retry with fsync(2) in a thread.
"""

import asyncio
import ctypes
import errno
import logging
import os
import platform
import tempfile
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

# The AIO system calls by architecture (asm/unistd_64.h, asm-generic/unistd.h).
_SYSCALLS = {
    "x86_64": {
        "io_setup": 206,
        "io_destroy": 207,
        "io_getevents": 208,
        "io_submit": 209,
    },
    "aarch64": {"io_setup": 0, "io_destroy": 1, "io_submit": 2, "io_getevents": 4},
}
IOCB_CMD_FSYNC = 2
IOCB_FLAG_RESFD = 1
# aio_fsync() refuses a file whose filesystem has no fsync operation for it.
UNSUPPORTED = errno.EINVAL
# Requests in flight at once; more wait in our own queue.
CAPACITY = 256
PROBE_SECONDS = 10.0


class _Iocb(ctypes.Structure):
    """struct iocb (linux/aio_abi.h), little-endian layout."""

    _fields_ = [
        ("aio_data", ctypes.c_uint64),
        ("aio_key", ctypes.c_uint32),
        ("aio_rw_flags", ctypes.c_int32),
        ("aio_lio_opcode", ctypes.c_uint16),
        ("aio_reqprio", ctypes.c_int16),
        ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64),
        ("aio_nbytes", ctypes.c_uint64),
        ("aio_offset", ctypes.c_int64),
        ("aio_reserved2", ctypes.c_uint64),
        ("aio_flags", ctypes.c_uint32),
        ("aio_resfd", ctypes.c_uint32),
    ]


class _IoEvent(ctypes.Structure):
    """struct io_event (linux/aio_abi.h)."""

    _fields_ = [
        ("data", ctypes.c_uint64),
        ("obj", ctypes.c_uint64),
        ("res", ctypes.c_int64),
        ("res2", ctypes.c_int64),
    ]


class KernelSync:
    """fsync through one AIO context of this process, completed on one loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        libc: ctypes.CDLL,
        numbers: dict[str, int],
        context: int,
        eventfd: int,
    ) -> None:
        self._loop = loop
        self._libc = libc
        self._numbers = numbers
        self._context = context
        self._eventfd = eventfd
        self._events = (_IoEvent * CAPACITY)()
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._queued: list[tuple[int, int]] = []
        self._in_flight = 0
        self._ids = 0
        loop.add_reader(eventfd, self._harvest)

    @classmethod
    async def open(cls, probe_dir: Path) -> "KernelSync | None":
        """A KernelSync for the running loop, or None where it cannot be had.

        A file made and removed in probe_dir is fsynced through it first, so
        that a kernel that takes the request but cannot do it is found here.
        """
        numbers = _SYSCALLS.get(platform.machine())
        if numbers is None or not hasattr(os, "eventfd"):
            return None
        libc = ctypes.CDLL(None, use_errno=True)
        context = ctypes.c_ulong(0)
        if libc.syscall(numbers["io_setup"], CAPACITY, ctypes.byref(context)) < 0:
            log.info("kernelsync: io_setup: %s", os.strerror(ctypes.get_errno()))
            return None
        eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        sync = cls(asyncio.get_running_loop(), libc, numbers, context.value, eventfd)
        # The state root may not be made yet: its nearest folder that is.
        folder = probe_dir
        while not folder.is_dir() and folder != folder.parent:
            folder = folder.parent
        try:
            fd, name = tempfile.mkstemp(dir=folder, prefix=".fsync-probe-")
        except OSError as exc:
            log.info("kernelsync: no file to try fsync on: %s", exc)
            sync.close()
            return None
        try:
            async with asyncio.timeout(PROBE_SECONDS):
                [error] = await sync.fsync([fd])
        except TimeoutError:
            error = OSError(errno.ETIMEDOUT, "no completion")
        finally:
            os.close(fd)
            os.unlink(name)
        if error is not None:
            log.info("kernelsync: fsync by io_submit: %s", error.strerror)
            sync.close()
            return None
        return sync

    async def fsync(self, fds: Sequence[int]) -> list[OSError | None]:
        """Fsync every fd, all at once; the error of each, or None."""
        futures = self._submit(fds)
        results: list[OSError | None] = []
        for future in futures:
            try:
                await future
            except OSError as exc:
                results.append(exc)
            else:
                results.append(None)
        return results

    def close(self) -> None:
        """Wait for the requests in flight (io_destroy does), then let go."""
        self._loop.remove_reader(self._eventfd)
        self._libc.syscall(self._numbers["io_destroy"], ctypes.c_ulong(self._context))
        os.close(self._eventfd)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(OSError(errno.ECANCELED, "fsync abandoned"))
        self._waiting.clear()

    def _submit(self, fds: Sequence[int]) -> list["asyncio.Future[None]"]:
        futures = []
        batch: list[tuple[int, int]] = []
        for fd in fds:
            self._ids += 1
            future: asyncio.Future[None] = self._loop.create_future()
            self._waiting[self._ids] = future
            futures.append(future)
            if self._in_flight + len(batch) < CAPACITY:
                batch.append((self._ids, fd))
            else:
                self._queued.append((self._ids, fd))
        self._send(batch)
        return futures

    def _send(self, batch: list[tuple[int, int]]) -> None:
        """Hand the kernel a batch of requests in as few io_submit calls as it
        takes: one, unless it refuses one of them, which fails alone."""
        while batch:
            count = len(batch)
            blocks = (_Iocb * count)()
            pointers = (ctypes.POINTER(_Iocb) * count)()
            for number, (ident, fd) in enumerate(batch):
                block = blocks[number]
                block.aio_data = ident
                block.aio_lio_opcode = IOCB_CMD_FSYNC
                block.aio_fildes = fd
                block.aio_flags = IOCB_FLAG_RESFD
                block.aio_resfd = self._eventfd
                pointers[number] = ctypes.pointer(block)
            sent = self._libc.syscall(
                self._numbers["io_submit"],
                ctypes.c_ulong(self._context),
                ctypes.c_long(count),
                pointers,
            )
            if sent <= 0:
                # The first request was refused (EBADF, EINVAL...): only it.
                code = ctypes.get_errno() if sent < 0 else errno.EAGAIN
                self._finish(batch[0][0], -code)
                sent = 1
            else:
                self._in_flight += sent
            batch = batch[sent:]

    def _harvest(self) -> None:
        try:
            os.eventfd_read(self._eventfd)
        except BlockingIOError:
            return
        while True:
            count = self._libc.syscall(
                self._numbers["io_getevents"],
                ctypes.c_ulong(self._context),
                ctypes.c_long(0),
                ctypes.c_long(CAPACITY),
                self._events,
                None,
            )
            if count <= 0:
                break
            self._in_flight -= count
            for event in self._events[:count]:
                self._finish(event.data, event.res)
            if count < CAPACITY:
                break
        room = CAPACITY - self._in_flight
        if self._queued and room > 0:
            batch, self._queued = self._queued[:room], self._queued[room:]
            self._send(batch)

    def _finish(self, ident: int, result: int) -> None:
        future = self._waiting.pop(ident, None)
        if future is None or future.done():
            return
        if result < 0:
            future.set_exception(OSError(-result, os.strerror(-result)))
        else:
            future.set_result(None)


def fsync_each(fds: Sequence[int]) -> list[OSError | None]:
    """fsync(2) the fds one after another (blocking); the error of each, or None."""
    errors: list[OSError | None] = []
    for fd in fds:
        try:
            os.fsync(fd)
        except OSError as exc:
            errors.append(exc)
        else:
            errors.append(None)
    return errors
