"""A tiny LMTP server that records what an MTA hands it, for MTA fixture self-tests."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# RFC 2033 section 4.2: after the final dot the server answers once for every
# recipient that RCPT accepted, in RCPT order.  A recipient missing from
# SinkSession.replies gets this reply.
DELIVERED = "250 2.0.0 <{rcpt}> delivered to the sink"

CAPABILITIES = (
    "PIPELINING",
    "ENHANCEDSTATUSCODES",
    "8BITMIME",
    "XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT",
)


@dataclass(frozen=True)
class Transaction:
    """One message as the sink received it: the envelope and the unstuffed data."""

    lhlo: str
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    xforward: tuple[str, ...]


@dataclass
class SinkSession:
    """The LMTP dialogue of one connection, fed one line at a time, without I/O."""

    replies: dict[str, str]
    hostname: str = "sink.test"
    lhlo: str = ""
    mail_from: str | None = None
    rcpt_tos: list[str] = field(default_factory=list)
    xforward: list[str] = field(default_factory=list)
    in_data: bool = False
    data_lines: list[bytes] = field(default_factory=list)
    finished: list[Transaction] = field(default_factory=list)
    closing: bool = False

    def greeting(self) -> bytes:
        """The 220 banner sent on connect."""
        return self._wire([f"220 {self.hostname} LMTP sink ready"])

    def feed(self, line: bytes) -> bytes:
        """Take one CRLF-terminated line; return the bytes to answer (maybe none)."""
        if self.in_data:
            return self._data_line(line)
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        verb, _, argument = text.partition(" ")
        handler = self._handlers().get(verb.upper(), self._unknown)
        return self._wire(handler(argument))

    def _handlers(self) -> dict[str, Callable[[str], list[str]]]:
        return {
            "LHLO": self._lhlo,
            "MAIL": self._mail,
            "RCPT": self._rcpt,
            "DATA": self._data,
            "RSET": self._rset,
            "NOOP": lambda _: ["250 2.0.0 Ok"],
            "QUIT": self._quit,
            "XFORWARD": self._xforward,
        }

    def _lhlo(self, argument: str) -> list[str]:
        self.lhlo = argument
        self._reset()
        lines = [self.hostname, *CAPABILITIES]
        return [f"250-{line}" for line in lines[:-1]] + [f"250 {lines[-1]}"]

    def _mail(self, argument: str) -> list[str]:
        if not self.lhlo:
            return ["503 5.5.1 Say LHLO first"]
        if self.mail_from is not None:
            return ["503 5.5.1 Nested MAIL command"]
        self.mail_from = _address(argument)
        return ["250 2.1.0 Ok"]

    def _rcpt(self, argument: str) -> list[str]:
        if self.mail_from is None:
            return ["503 5.5.1 Need MAIL first"]
        self.rcpt_tos.append(_address(argument))
        return ["250 2.1.5 Ok"]

    def _data(self, argument: str) -> list[str]:
        if not self.rcpt_tos:
            return ["503 5.5.1 Need RCPT first"]
        self.in_data = True
        return ["354 End data with <CR><LF>.<CR><LF>"]

    def _data_line(self, line: bytes) -> bytes:
        if line in (b".\r\n", b".\n"):
            return self._wire(self._end_of_data())
        # RFC 5321 section 4.5.2: drop the first of a leading pair of dots.
        self.data_lines.append(line[1:] if line.startswith(b".") else line)
        return b""

    def _end_of_data(self) -> list[str]:
        assert self.mail_from is not None
        rcpt_tos = tuple(self.rcpt_tos)
        self.finished.append(
            Transaction(
                self.lhlo,
                self.mail_from,
                rcpt_tos,
                b"".join(self.data_lines),
                tuple(self.xforward),
            )
        )
        self._reset()
        return [
            self.replies.get(rcpt, DELIVERED).format(rcpt=rcpt) for rcpt in rcpt_tos
        ]

    def _rset(self, argument: str) -> list[str]:
        self._reset()
        return ["250 2.0.0 Ok"]

    def _quit(self, argument: str) -> list[str]:
        self.closing = True
        return ["221 2.0.0 Bye"]

    def _xforward(self, argument: str) -> list[str]:
        self.xforward.append(argument)
        return ["250 2.0.0 Ok"]

    def _unknown(self, argument: str) -> list[str]:
        return ["500 5.5.2 Command not recognized"]

    def _reset(self) -> None:
        self.mail_from = None
        self.rcpt_tos = []
        self.xforward = []
        self.in_data = False
        self.data_lines = []

    @staticmethod
    def _wire(lines: list[str]) -> bytes:
        return "".join(f"{line}\r\n" for line in lines).encode()


def _address(argument: str) -> str:
    """The bare address of `FROM:<a@b> PARAMS` or `TO:<a@b>`, any case."""
    _, _, rest = argument.partition(":")
    return rest.strip().split(" ")[0].strip("<>")


class LmtpSink:
    """An LMTP server in a background thread on a TCP port or a unix socket.

    `replies` maps a recipient address to its reply after the dot; `{rcpt}` in a
    reply is replaced by the address.  Nothing is written but the socket file.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        socket_path: Path | None = None,
        replies: dict[str, str] | None = None,
    ) -> None:
        """Serve on 127.0.0.1:`port` or on the unix socket `socket_path`."""
        if (port is None) == (socket_path is None):
            raise ValueError("give exactly one of port and socket_path")
        self.port = port
        self.socket_path = socket_path
        self.replies = dict(replies or {})
        self.transactions: list[Transaction] = []
        self.connections = 0
        self._changed = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> LmtpSink:
        """Bind the socket and serve from a background thread."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        self._server = future.result(timeout=10)
        return self

    def stop(self) -> None:
        """Close the server and its connections, and remove the socket file."""
        if self._loop.is_closed():
            return
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()
        if self.socket_path is not None:
            self.socket_path.unlink(missing_ok=True)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Transaction]:
        """Block until `count` transactions arrived; fail after `timeout` seconds."""
        with self._changed:
            arrived = self._changed.wait_for(
                lambda: len(self.transactions) >= count, timeout
            )
            if not arrived:
                raise TimeoutError(
                    f"LMTP sink got {len(self.transactions)} of {count} messages"
                )
            return list(self.transactions)

    def __enter__(self) -> LmtpSink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _listen(self) -> asyncio.Server:
        if self.socket_path is None:
            return await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        server = await asyncio.start_unix_server(self._serve, str(self.socket_path))
        # The MTA's delivery agent runs as its own user, not as root.
        os.chmod(self.socket_path, 0o666)
        return server

    async def _close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        session = SinkSession(self.replies)
        self._writers.add(writer)
        with self._changed:
            self.connections += 1
        writer.write(session.greeting())
        try:
            while not session.closing and (line := await reader.readline()):
                writer.write(session.feed(line))
                self._record(session)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def _record(self, session: SinkSession) -> None:
        if not session.finished:
            return
        with self._changed:
            self.transactions.extend(session.finished)
            self._changed.notify_all()
        session.finished.clear()
