"""Several processes of one server on the same listening sockets, and their parent.

One asyncio process keeps one core busy at most. With more workers, the parent
opens the listeners, forks the workers, which each run the whole server on the
inherited sockets (the kernel gives each new connection to one of them), and
from then on only tends them: SIGTERM and SIGINT are passed on and waited for,
SIGHUP is passed on, and a worker that dies unasked is replaced. The parent
waits for signals with sigtimedwait(2), so it runs no handler and no thread of
its own while it forks.
"""

import contextlib
import ctypes
import logging
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

# The signals the parent waits for; blocked, so they queue until it asks.
WAITED = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD})
# A worker that dies sooner than this after its start is restarted only after
# this long, so a worker that cannot start does not become a fork loop.
RESTART_DELAY = 1.0
READY_TIMEOUT = 30.0
_PR_SET_PDEATHSIG = 1

# What a worker runs: given a callback to call once it accepts connections, it
# serves until told to stop and returns its exit status.
WorkerMain = Callable[[Callable[[], None]], int]


def worker_count(configured: int) -> int:
    """The number of workers: as configured, or one per CPU for 0."""
    if configured > 0:
        return configured
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


@dataclass
class _Worker:
    index: int
    pid: int
    started: float


class Parent:
    """Forks the workers, passes signals on, replaces the ones that die."""

    def __init__(
        self,
        name: str,
        count: int,
        main: WorkerMain,
        on_stop: Callable[[], None] = lambda: None,
    ) -> None:
        """on_stop runs in the parent at the first SIGTERM or SIGINT."""
        self.name = name
        self.count = count
        self.main = main
        self.on_stop = on_stop
        self.workers: dict[int, _Worker] = {}
        self.restarts: dict[int, float] = {}
        self.stopping = False
        self.status = 0

    def run(self, ready: Callable[[], None]) -> int:
        """Fork the workers, call ready once all accept, tend them until stopped."""
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, WAITED)
        try:
            self._start_all()
            ready()
            while self.workers or not self.stopping:
                self._wait_signal()
                self._reap()
                self._restart_due()
            return self.status
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def _start_all(self) -> None:
        """Fork every worker and wait until each accepts connections."""
        read_end, write_end = os.pipe()
        for index in range(self.count):
            self._fork(index, (read_end, write_end))
        os.close(write_end)
        # One byte from each worker once it listens; end of file once all have
        # closed their end, including any that died first (_reap reports it).
        seen = 0
        deadline = time.monotonic() + READY_TIMEOUT
        while seen < self.count:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([read_end], [], [], wait)[0]:
                break
            data = os.read(read_end, self.count - seen)
            if not data:
                break
            seen += len(data)
        os.close(read_end)
        log.info("%s: %d of %d worker(s) ready", self.name, seen, self.count)

    def _fork(self, index: int, pipe: tuple[int, int] | None) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            ready_end = None
            if pipe is not None:
                os.close(pipe[0])
                ready_end = pipe[1]
            os._exit(self._be_worker(index, parent, ready_end))
        self.workers[pid] = _Worker(index, pid, time.monotonic())
        log.info("%s: worker %d started, pid %d", self.name, index, pid)

    def _be_worker(self, index: int, parent: int, ready_end: int | None) -> int:
        status = 1
        try:
            _die_with_parent()
            if os.getppid() != parent:
                return 1
            # Readiness is the parent's to tell systemd, and only its.
            os.environ.pop("NOTIFY_SOCKET", None)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, WAITED)

            def ready() -> None:
                if ready_end is not None:
                    # The parent may have stopped waiting (it timed out).
                    with contextlib.suppress(OSError):
                        os.write(ready_end, b"r")
                    os.close(ready_end)

            status = self.main(ready)
        except SystemExit as stop:
            status = stop.code if isinstance(stop.code, int) else 1
        except BaseException:
            log.exception("%s: worker %d failed", self.name, index)
        finally:
            logging.shutdown()
        return status

    def _wait_signal(self) -> None:
        timeout = 1.0
        if self.restarts:
            timeout = max(0.0, min(self.restarts.values()) - time.monotonic())
        info = signal.sigtimedwait(WAITED, timeout)
        if info is None or info.si_signo == signal.SIGCHLD:
            return
        if info.si_signo == signal.SIGHUP:
            log.info("%s: SIGHUP passed on to %d worker(s)", self.name, len(self))
            self._signal_all(signal.SIGHUP)
            return
        if not self.stopping:
            log.info("%s: stopping %d worker(s)", self.name, len(self))
            self.stopping = True
            self.on_stop()
        self.restarts.clear()
        self._signal_all(signal.SIGTERM)

    def __len__(self) -> int:
        return len(self.workers)

    def _signal_all(self, signo: int) -> None:
        for pid in self.workers:
            try:
                os.kill(pid, signo)
            except ProcessLookupError:
                continue

    def _reap(self) -> None:
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            code = os.waitstatus_to_exitcode(wait_status)
            if self.stopping:
                self.status = self.status or (code if code > 0 else 0)
                continue
            log.error(
                "%s: worker %d (pid %d) exited with status %d; replacing it",
                self.name,
                worker.index,
                pid,
                code,
            )
            soon = time.monotonic() - worker.started < RESTART_DELAY
            self.restarts[worker.index] = time.monotonic() + (
                RESTART_DELAY if soon else 0.0
            )

    def _restart_due(self) -> None:
        now = time.monotonic()
        for index, when in list(self.restarts.items()):
            if when <= now and not self.stopping:
                del self.restarts[index]
                self._fork(index, None)


def _die_with_parent() -> None:
    """Have the kernel kill this worker when its parent dies (prctl(2))."""
    # Limitation: Linux only; elsewhere a parent killed with SIGKILL leaves its
    # workers serving until they are stopped by hand.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return
    prctl = getattr(libc, "prctl", None)
    if prctl is None:
        return
    if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG): %s", os.strerror(ctypes.get_errno()))
