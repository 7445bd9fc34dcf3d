"""Running the LMTP server as a process: signals, reload, readiness."""

import asyncio
import logging
import os
import signal
from pathlib import Path

from lmtpd.server import LmtpServer
from mdcore import eventloop
from mdcore.config import ServerConfig, load_config
from mdcore.errors import MdmailError
from mdcore.systemd import notify

log = logging.getLogger(__name__)


async def serve(config: ServerConfig) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP reloads the config file."""
    server = LmtpServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Handlers first: a SIGTERM that arrives while the listeners open must still
    # stop the server cleanly (and remove its socket files).
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, server)
    await server.start()
    notify("READY=1\nSTATUS=delivering")
    await stop.wait()
    notify("STOPPING=1")
    log.info("lmtpd: stopping")
    await server.stop()


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


def run(config: ServerConfig) -> None:
    """Serve in this process until stopped."""
    eventloop.run(serve(config), use_uvloop=os.environ.get("MDMAIL_UVLOOP") != "0")
