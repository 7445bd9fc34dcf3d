"""Running the web page as its own process: uvicorn on the configured address."""

import logging
import signal

import uvicorn

from mdcore.config import ServerConfig
from mdcore.exporter import start_exporter
from mdcore.metrics import Metrics, hosted_in
from mdcore.namespace import Registry
from mdweb.app import create_app
from mdweb.sessions import load_key

log = logging.getLogger(__name__)


def split_listen(listen: str) -> tuple[str, int]:
    """ADDRESS:PORT (IPv6 in brackets) as (address, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def run(config: ServerConfig) -> None:
    """Serve until SIGTERM or SIGINT; uvicorn finishes open requests first."""
    host, port = split_listen(config.web.listen)
    metrics = Metrics(hosted_in(Registry(config.root)))
    app = create_app(config, load_key(config.web.secret_key_file), metrics)

    # Forwarded headers are ours to judge (mdweb.forwarded, trusted_proxies
    # only): uvicorn's own handling would believe them from loopback.
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            proxy_headers=False,
            server_header=False,
            access_log=False,
            log_config=None,
            lifespan="off",
        )
    )
    # uvicorn stops on SIGTERM and SIGINT, then raises the signal again for
    # the handler that was there before it: make that one a no-op, so that a
    # stop requested by signal ends the process with status 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _already_handled)
    exporter = start_exporter(
        config.web.metrics_listen,
        metrics.registry,
        config.source,
        "web.metrics_listen",
    )
    log.info("web: listening on %s", config.web.listen)
    try:
        server.run()
    finally:
        if exporter is not None:
            exporter.close()
    log.info("web: stopped")


def _already_handled(signum: int, frame: object) -> None:
    """Ignore a stop signal uvicorn has already acted on."""
