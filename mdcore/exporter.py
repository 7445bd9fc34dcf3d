"""The HTTP endpoint a Prometheus server scrapes: /metrics on ADDRESS:PORT.

It runs in a daemon thread of its own, beside whatever loop the server has
(asyncio, uvicorn or libmilter's threads), so a scrape never waits on mail
and a stopping server never waits on a scrape.
"""

import logging
import os
import socket
import socketserver
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from mdcore.errors import ConfigError

log = logging.getLogger(__name__)


class _QuietHandler(WSGIRequestHandler):
    """Request lines go to the debug log, not to standard error."""

    def log_message(self, format: str, *args: object) -> None:
        log.debug("metrics: %s %s", self.address_string(), format % args)


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    """One thread per scrape; daemon threads, so none holds the process open."""

    daemon_threads = True


class _Server6(_Server):
    """The same over IPv6."""

    address_family = socket.AF_INET6


class Exporter:
    """A running /metrics endpoint."""

    def __init__(self, httpd: WSGIServer) -> None:
        """Serve httpd in a daemon thread."""
        self.httpd = httpd
        self.thread = threading.Thread(
            target=httpd.serve_forever, name="metrics", daemon=True
        )
        self.thread.start()

    @property
    def address(self) -> str:
        """Where it listens, as ADDRESS:PORT."""
        host, port = self.httpd.socket.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"{shown}:{port}"

    @property
    def socket_inode(self) -> int:
        """The listening socket's inode, as /proc/self/fd names it."""
        return os.fstat(self.httpd.fileno()).st_ino

    def close(self) -> None:
        """Stop serving and close the socket (waits up to half a second)."""
        self.httpd.shutdown()
        self.httpd.server_close()


def split_address(listen: str) -> tuple[str, int]:
    """ADDRESS:PORT (IPv6 in brackets or bare) as (address, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def start_exporter(
    listen: str, registry: CollectorRegistry, file: str, key: str
) -> Exporter | None:
    """Serve registry on listen ("" is off); ConfigError naming key if it cannot."""
    # Limitation: plain HTTP with no authentication, so the page is for loopback
    # or a management network; config keys for a certificate and client CA,
    # wrapping httpd.socket in an SSLContext, would lift it.
    if not listen:
        return None
    host, port = split_address(listen)
    server_class = _Server6 if ":" in host else _Server
    try:
        httpd = make_server(
            host, port, make_wsgi_app(registry), server_class, _QuietHandler
        )
    except OSError as error:
        raise ConfigError(
            file, key, f"cannot listen: {error.strerror or error}"
        ) from None
    exporter = Exporter(httpd)
    log.info("metrics: serving /metrics on %s", exporter.address)
    return exporter
