"""Running the LMTP server as a process: signals, reload, readiness, workers."""

import asyncio
import logging
import math
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from lmtpd.server import LmtpServer
from mdcore import eventloop, metrics, prefork
from mdcore.config import ServerConfig, load_config
from mdcore.dedupe import share_dedupe_tags
from mdcore.errors import MdmailError
from mdcore.exporter import start_exporter
from mdcore.listeners import SocketOwner, close_listeners, open_listeners
from mdcore.systemd import notify

log = logging.getLogger(__name__)


async def serve(
    config: ServerConfig,
    sockets: list[socket.socket] | None = None,
    ready: Callable[[], None] | None = None,
) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP reloads the config file.

    Given sockets (a worker's, opened by its parent), the server listens on those,
    tells ready() instead of systemd, and leaves the socket files to the parent.
    """
    server = LmtpServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Handlers first: a SIGTERM that arrives while the listeners open must still
    # stop the server cleanly (and remove its socket files).
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, server)
    await server.start(sockets)
    if ready is None:
        notify("READY=1\nSTATUS=delivering")
    else:
        ready()
    await stop.wait()
    if ready is None:
        notify("STOPPING=1")
    log.info("lmtpd: stopping")
    await server.stop(remove_sockets=ready is None)


def _reload(server: LmtpServer) -> None:
    source = server.config.source
    if not source.startswith("/") and not Path(source).exists():
        server.registry.invalidate()
        log.info("lmtpd: namespaces reloaded")
        return
    try:
        server.reload(load_config(Path(source)))
    except MdmailError as error:
        log.error("lmtpd: reload refused, keeping the running config: %s", error)


def run(config: ServerConfig) -> int:
    """Serve until stopped: in this process, or in lmtp.workers processes."""
    count = prefork.worker_count(config.lmtp.workers)
    if count <= 1:
        eventloop.run(serve(config), use_uvloop=_uvloop())
        return 0
    return run_workers(config, count)


def run_workers(config: ServerConfig, count: int) -> int:
    """Open the listeners and the metrics endpoint here; serve in count workers."""
    lmtp = config.lmtp
    counts = (
        tempfile.mkdtemp(prefix="mdmail-lmtpd-metrics.") if lmtp.metrics_listen else ""
    )
    exporter = None
    if counts:
        # Limitation: the endpoint's thread runs in the parent while it forks
        # (a worker replaced later is forked with it running); the thread holds
        # no lock a worker takes, but a fork-safe design would serve the page
        # from a process of its own.
        exporter = start_exporter(
            lmtp.metrics_listen,
            metrics.summed_registry(counts),
            config.source,
            "lmtp.metrics_listen",
        )
    owner = SocketOwner(int(lmtp.socket_mode, 8), lmtp.socket_owner, lmtp.socket_group)
    sockets = open_listeners(lmtp.listen, owner)
    # Each worker takes its share of the sessions, so together they keep the limit.
    share = math.ceil(lmtp.max_sessions / count)
    worker_config = replace(
        config, lmtp=replace(lmtp, metrics_listen="", max_sessions=share)
    )

    # A retry may reach any worker: they see one another's recent keyed
    # deliveries in a table mapped here, before the first fork.
    share_dedupe_tags()

    def worker(ready: Callable[[], None]) -> int:
        if exporter is not None:
            # The parent's endpoint: this process has no business holding it.
            exporter.httpd.socket.close()
        if counts:
            metrics.count_in_files(counts)
        eventloop.run(serve(worker_config, sockets, ready), use_uvloop=_uvloop())
        return 0

    def parent_ready() -> None:
        notify("READY=1\nSTATUS=delivering")

    def parent_stop() -> None:
        # The parent's copies too, or the kernel would keep queueing new
        # connections that no worker will accept any more.
        if not sockets:
            return
        notify("STOPPING=1")
        close_listeners(sockets)
        sockets.clear()

    try:
        parent = prefork.Parent("lmtpd", count, worker, parent_stop)
        status = parent.run(parent_ready)
    finally:
        parent_stop()
        if exporter is not None:
            exporter.close()
        if counts:
            shutil.rmtree(counts, ignore_errors=True)
    log.info("lmtpd: stopped")
    return status


def _uvloop() -> bool:
    return os.environ.get("MDMAIL_UVLOOP") != "0"
