"""Running the milter as a process: libmilter's listener, readiness and stopping.

libmilter owns the process once `Milter.runmilter` starts: it opens the socket, runs
one thread per MTA connection, and its own signal thread waits (sigwait) for
SIGTERM, SIGHUP or SIGINT. On SIGTERM it stops accepting and `runmilter` returns
within a few seconds (its listener looks at the stop flag every 5 s or so).
"""

import logging
import os
import re
import signal
import threading
import time
from collections.abc import Set as AbstractSet
from pathlib import Path

import Milter

from mdcore.config import ServerConfig
from mdcore.errors import MdmailError
from mdcore.exporter import start_exporter
from mdcore.metrics import Metrics, hosted_in
from mdcore.systemd import notify
from mdmilter.filter import factory
from mdmilter.listener import open_listener
from mdmilter.policy import Policy

log = logging.getLogger(__name__)

# The name the MTA knows the filter by (sendmail's INPUT_MAIL_FILTER first field).
MILTER_NAME = "mdmilter"
READY_TIMEOUT = 30.0
READY_POLL = 0.02

# libmilter's socket forms: unix:/path (or local:/path), inet:PORT[@HOST],
# inet6:PORT[@HOST].
_SOCKET_SPEC = re.compile(r"(?:(?:unix|local):/.+|inet6?:\d{1,5}(?:@[^\s@]+)?)\Z")

# Handled by libmilter's signal thread only (see run()).
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}

# /proc/net/unix flags of a listening socket (__SO_ACCEPTCON); TCP state LISTEN.
_UNIX_LISTENING = "00010000"
_TCP_LISTEN = "0A"


class MilterServiceError(MdmailError):
    """The milter cannot run: a bad socket spec or a socket it cannot open."""


def check_socket_spec(spec: str) -> str:
    """Return a libmilter socket spec unchanged, or raise MilterServiceError."""
    if not _SOCKET_SPEC.match(spec):
        raise MilterServiceError(
            f"milter socket {spec!r} is not inet:PORT@ADDRESS, inet6:PORT@ADDRESS "
            "or unix:/path"
        )
    return spec


def run(config: ServerConfig, socket_spec: str | None = None) -> None:
    """Serve the milter in this process until SIGTERM (or SIGINT, SIGHUP)."""
    spec = check_socket_spec(socket_spec or config.milter.socket)
    policy = Policy.from_config(config)
    metrics = Metrics(hosted_in(policy.registry))
    Milter.factory = factory(policy, metrics)

    # libmilter's signal thread takes SIGTERM with sigwait(), which needs every
    # other thread to block it: one of ours that does not would get it instead,
    # and its default action kills the process with sessions in flight. Threads
    # inherit the mask, so block it here, before the first thread starts (the
    # metrics endpoint's too).
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    exporter = start_exporter(
        config.milter.metrics_listen,
        metrics.registry,
        config.source,
        "milter.metrics_listen",
    )
    # The endpoint's own socket listens too: it must not pass for libmilter's.
    ignored = frozenset() if exporter is None else frozenset({exporter.socket_inode})
    announcer = threading.Thread(
        target=announce_ready,
        args=(spec, READY_TIMEOUT, ignored),
        name="ready",
        daemon=True,
    )
    announcer.start()

    log.info("milter: starting on %s (timeout %d s)", spec, config.milter.timeout)
    # Limitation: a unix socket gets the mode the process umask allows, as milter
    # has no socket_owner/socket_mode keys like lmtp's; set UMask= in the unit, or
    # add the keys and apply them once announce_ready() sees the socket listen.
    try:
        open_listener(MILTER_NAME, spec)
        Milter.runmilter(MILTER_NAME, spec, config.milter.timeout)
    except Milter.milter.error as error:
        raise MilterServiceError(f"milter cannot serve on {spec}: {error}") from None
    finally:
        if exporter is not None:
            exporter.close()
    tell_systemd("STOPPING=1")
    log.info("milter: stopped")


def announce_ready(
    spec: str, timeout: float = READY_TIMEOUT, ignored: AbstractSet[int] = frozenset()
) -> bool:
    """Send READY=1 to systemd once libmilter listens; False if it never did.

    `ignored` holds the inodes of listening sockets that are not libmilter's.
    """
    deadline = time.monotonic() + timeout
    while not listening_here(ignored):
        if time.monotonic() > deadline:
            log.warning("milter: no listening socket after %.0f s", timeout)
            return False
        time.sleep(READY_POLL)
    tell_systemd(f"READY=1\nSTATUS=filtering on {spec}")
    log.info("milter: ready on %s", spec)
    return True


def tell_systemd(state: str) -> None:
    """sd_notify(3) a state; a notify socket gone away is logged, never fatal."""
    try:
        notify(state)
    except OSError as error:
        log.warning("milter: cannot notify systemd (%s): %s", state.split()[0], error)


def listening_here(ignored: AbstractSet[int] = frozenset()) -> bool:
    """Whether this process holds a listening TCP or unix socket (Linux /proc).

    runmilter() opens its socket and blocks without telling Python when, so the
    socket is looked for among our own file descriptors. A probe connection would
    start a milter session and show up in the MTA-side logs.
    """
    # Limitation: Linux only; without /proc no READY=1 is ever sent, so a
    # Type=notify unit would time out there (Type=simple would do).
    return bool((_own_socket_inodes() - ignored) & _listening_inodes())


def _own_socket_inodes() -> set[int]:
    inodes = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def _listening_inodes() -> set[int]:
    found = set()
    for table in ("tcp", "tcp6"):
        for fields in _rows(Path("/proc/net") / table):
            if len(fields) > 9 and fields[3] == _TCP_LISTEN:
                found.add(int(fields[9]))
    for fields in _rows(Path("/proc/net/unix")):
        if len(fields) > 6 and fields[3] == _UNIX_LISTENING:
            found.add(int(fields[6]))
    return found


def _rows(table: Path) -> list[list[str]]:
    try:
        lines = table.read_text().splitlines()[1:]
    except OSError:
        return []
    return [line.split() for line in lines]
