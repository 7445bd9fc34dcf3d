"""Running the POP3 proxy as a process: signals, reload, readiness."""

import asyncio
import logging
import os
import signal
from pathlib import Path

from mdcore import eventloop
from mdcore.config import ServerConfig, load_config
from mdcore.errors import MdmailError
from mdcore.systemd import notify
from pop3proxy.server import Pop3Server

log = logging.getLogger(__name__)


async def serve(config: ServerConfig) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP reloads the config file."""
    server = Pop3Server(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload, server)
    notify("READY=1\nSTATUS=serving POP3")
    await stop.wait()
    notify("STOPPING=1")
    log.info("pop3proxy: stopping")
    await server.stop()


def reload(server: Pop3Server) -> None:
    """Read the config file again; a bad one is refused and the running one kept."""
    source = Path(server.config.source)
    if not source.is_file():
        server.registry.invalidate()
        log.info("pop3proxy: namespaces reloaded")
        return
    try:
        server.reload(load_config(source))
    except MdmailError as error:
        log.error("pop3proxy: reload refused, keeping the running config: %s", error)


def run(config: ServerConfig) -> None:
    """Serve in this process until stopped."""
    eventloop.run(serve(config), use_uvloop=os.environ.get("MDMAIL_UVLOOP") != "0")
