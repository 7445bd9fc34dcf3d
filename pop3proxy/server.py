"""The asyncio layer of the POP3 proxy: listeners, limits, sessions, shutdown.

Plain listeners (`pop3.listen`) offer STLS when a certificate is configured;
implicit TLS listeners (`pop3.tls_listen`, POP3S) handshake first. Each
connection is a `pop3proxy.session.Session` task. On SIGTERM the server
stops listening, tells idle sessions "-ERR [SYS/TEMP]" and closes them
(without QUIT nothing is removed, RFC 1939 section 6), lets busy ones finish
for a short grace, then cancels the rest.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

from mdcore.blocking import BlockingPool
from mdcore.config import Pop3Config, ServerConfig
from mdcore.errors import ConfigError
from mdcore.exporter import Exporter, start_exporter
from mdcore.listeners import SocketOwner, open_listener, parse_listen
from mdcore.metrics import Metrics, hosted_in
from mdcore.namespace import Registry
from mdcore.systemd import inherited_sockets
from mdcore.throttle import LoginThrottle
from pop3proxy import responses
from pop3proxy.auth import Authenticator, LoginAttempt, Verdict
from pop3proxy.dialogue import Settings
from pop3proxy.responses import Response
from pop3proxy.session import Session
from pop3proxy.tls import TlsContexts

log = logging.getLogger(__name__)

T = TypeVar("T")
SHUTDOWN_GRACE = 5.0
FILE_WORKERS = 32
# A systemd socket unit marks its POP3S sockets with FileDescriptorName=pop3s.
IMPLICIT_TLS_NAME = "pop3s"

# RFC 2449 section 8.1.2: [SYS/TEMP], the client may try again later.
TOO_MANY_SESSIONS = Response(False, "Too many connections, try again later", "SYS/TEMP")


class Pop3Server:
    """All listeners and sessions of one POP3 proxy process."""

    def __init__(self, config: ServerConfig, registry: Registry | None = None) -> None:
        """Load certificates and rules; ConfigError if a certificate cannot load."""
        self.config = config
        self.registry = registry or Registry(config.root)
        self.metrics = Metrics(self._known_domain)
        self.exporter: Exporter | None = None
        self.auth = Authenticator(config, self.registry)
        self.throttle = _throttle(config.pop3)
        self.tls = TlsContexts(config)
        self.settings = self._settings()
        self.session_prefix = f"P{secrets.token_hex(2)}"
        self.stopping = False
        self.sessions: dict[asyncio.Task[None], Session] = {}
        self.per_client: Counter[str] = Counter()
        self.servers: list[asyncio.Server] = []
        # Password hashing is CPU-bound and Argon2 takes 64 MiB a check: one
        # worker per core. File steps wait on the disk: more of them.
        self.checks = ThreadPoolExecutor(os.cpu_count() or 2, "pop3-auth")
        self.files = BlockingPool(FILE_WORKERS, "pop3-files")

    def _settings(self) -> Settings:
        return Settings(self.config.hostname, tls_available=self.tls.available)

    def _known_domain(self, domain: str) -> bool:
        """A metrics label may be a hosted domain or one `domains:` names."""
        configured = any(binding.domain == domain for binding in self.config.domains)
        return configured or hosted_in(self.registry)(domain)

    async def start(
        self,
        plain: list[socket.socket] | None = None,
        implicit: list[socket.socket] | None = None,
    ) -> None:
        """Open the listeners (or use the given sockets) and start accepting."""
        pop3 = self.config.pop3
        self.exporter = start_exporter(
            pop3.metrics_listen,
            self.metrics.registry,
            self.config.source,
            "pop3.metrics_listen",
        )
        if plain is None and implicit is None:
            plain, implicit = _open_sockets(pop3)
        implicit = implicit or []
        if implicit and self.tls.context is None:
            raise ConfigError(self.config.source, "pop3.tls_listen", "no certificate")
        for sock in plain or []:
            self.servers.append(await self._serve(sock, None))
        for sock in implicit:
            self.servers.append(await self._serve(sock, self.tls.context))
        names = [_name(sock) for server in self.servers for sock in server.sockets]
        log.info("pop3proxy: listening on %s", ", ".join(names))

    async def _serve(
        self, sock: socket.socket, context: ssl.SSLContext | None
    ) -> asyncio.Server:
        async def accept(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            await self._accept(reader, writer, context is not None)

        if sock.family == socket.AF_UNIX:
            return await asyncio.start_unix_server(accept, sock=sock, ssl=context)
        return await asyncio.start_server(accept, sock=sock, ssl=context)

    async def _accept(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        implicit_tls: bool,
    ) -> None:
        session = Session(self, reader, writer, implicit_tls)
        refusal = self._refusal(session.client)
        if refusal is not None:
            log.info(
                "%s: refused client=%s (%s)", session.name, session.client, refusal.text
            )
            writer.write(refusal.to_bytes())
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self.sessions[task] = session
        self.per_client[session.client] += 1
        try:
            await session.run()
        finally:
            del self.sessions[task]
            self.per_client[session.client] -= 1
            if self.per_client[session.client] <= 0:
                del self.per_client[session.client]

    def _refusal(self, client: str) -> Response | None:
        """Why a new connection is refused at the greeting, if it is."""
        pop3 = self.config.pop3
        if self.stopping:
            return responses.SHUTTING_DOWN
        if len(self.sessions) >= pop3.max_sessions:
            return TOO_MANY_SESSIONS
        if self.per_client[client] >= pop3.max_sessions_per_client:
            return TOO_MANY_SESSIONS
        return None

    # Worker threads.

    async def check_password(self, attempt: LoginAttempt) -> Verdict:
        """Decide a login in a password worker (never on the event loop)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.checks, self.auth.check, attempt)

    def submit(self, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Start a blocking file step (open, read, remove) in a worker thread."""
        return self.files.submit(function, *args)

    async def in_worker(self, function: Callable[..., T], *args: Any) -> T:
        """Run a blocking file step in a worker thread and wait for it."""
        return await self.files.run(function, *args)

    # Stop and reload.

    async def stop(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop accepting, close idle sessions, give busy ones `grace` seconds."""
        self.stopping = True
        for server in self.servers:
            server.close()
        for task, session in list(self.sessions.items()):
            if session.idle:
                task.cancel()
        tasks = list(self.sessions)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=grace)
        for server in self.servers:
            await server.wait_closed()
        self.checks.shutdown(wait=False, cancel_futures=True)
        self.files.shutdown()
        if self.exporter is not None:
            await asyncio.to_thread(self.exporter.close)
        log.info("pop3proxy: stopped")

    def reload(self, config: ServerConfig) -> None:
        """Take a new configuration (SIGHUP); all listeners stay as they are.

        Certificates are loaded first: if one fails, ConfigError and the
        running configuration stays whole.
        """
        pop3 = replace(
            config.pop3,
            listen=self.config.pop3.listen,
            tls_listen=self.config.pop3.tls_listen,
            metrics_listen=self.config.pop3.metrics_listen,
        )
        config = replace(config, pop3=pop3)
        self.tls.reload(config)
        self.config = config
        self.auth = Authenticator(config, self.registry)
        self.throttle.base = pop3.login_delay_base
        self.throttle.maximum = pop3.login_delay_max
        self.settings = self._settings()
        self.registry.invalidate()
        log.info("pop3proxy: configuration reloaded from %s", config.source)


def _throttle(pop3: Pop3Config) -> LoginThrottle:
    return LoginThrottle(pop3.login_delay_base, pop3.login_delay_max)


def _open_sockets(
    pop3: Pop3Config,
) -> tuple[list[socket.socket], list[socket.socket]]:
    """(plain, implicit TLS) listeners: systemd's if it passed any, else ours."""
    passed = inherited_sockets()
    if passed:
        log.info("pop3proxy: using %d socket(s) passed by systemd", len(passed))
        plain = [sock for name, sock in passed if name != IMPLICIT_TLS_NAME]
        implicit = [sock for name, sock in passed if name == IMPLICIT_TLS_NAME]
        return plain, implicit
    opened: list[socket.socket] = []
    try:
        for spec in (*pop3.listen, *pop3.tls_listen):
            opened.append(open_listener(parse_listen(spec), SocketOwner()))
    except OSError as error:
        for sock in opened:
            sock.close()
        raise ConfigError("pop3", spec, f"cannot listen: {error.strerror}") from None
    count = len(pop3.listen)
    return opened[:count], opened[count:]


def _name(sock: socket.socket) -> str:
    name = sock.getsockname()
    return name if isinstance(name, str) else f"{name[0]}:{name[1]}"
