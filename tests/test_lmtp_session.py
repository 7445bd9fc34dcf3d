"""The session layer in one process: a stub transport and server, no sockets.

What the end-to-end tests cannot provoke from outside: a fault of ours in the
middle of a command, and the flow control between replies and input.
"""

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from types import SimpleNamespace
from typing import Any

from lmtpd import replies
from lmtpd.session import HELD_INPUT, Session
from lmtpd.transaction import Limits

GREETING = b"220 lmtp.test LMTP server ready\r\n"


class StubTransport(asyncio.Transport):
    """Collects what is written and what the session asks of the transport."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False
        self.aborted = False
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


class FailingDeliverer:
    """Resolving any recipient raises: a bug of ours, not a refusal."""

    def check_recipient(self, *args: object) -> object:
        raise RuntimeError("resolver bug")


def stub_server(deliverer: object) -> SimpleNamespace:
    """The parts of LmtpServer a session reads."""
    lmtp = SimpleNamespace(max_sessions=10, idle_timeout=300)
    config = SimpleNamespace(hostname="lmtp.test", lmtp=lmtp)
    return SimpleNamespace(
        config=config,
        limits=Limits(),
        session_prefix="Ltest",
        stopping=False,
        sessions=set(),
        deliverer=deliverer,
    )


def connected(deliverer: object) -> tuple[Session, StubTransport]:
    """A session over a stub server, greeted over a stub transport."""
    server: Any = stub_server(deliverer)
    session = Session(server)
    transport = StubTransport()
    session.connection_made(transport)
    return session, transport


async def forever() -> None:
    """A delivery that does not end while the test looks."""
    await asyncio.Event().wait()


def in_loop(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run body on a fresh event loop (a session needs a running one)."""
    asyncio.run(body())


def test_internal_fault_closes_with_421() -> None:
    """An exception while answering RCPT: 421 4.3.0, the connection closed, the
    error logged, and no reply that could pass for a refusal of the recipient."""

    async def body() -> None:
        session, transport = connected(FailingDeliverer())
        assert bytes(transport.written) == GREETING
        transport.written.clear()

        session.data_received(
            b"LHLO client\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<foo@abc.example>\r\n"
        )

        lines = bytes(transport.written).split(b"\r\n")
        assert lines[-2] == replies.INTERNAL_ERROR.to_bytes().rstrip(b"\r\n")
        assert not any(line.startswith(b"5") for line in lines)
        assert transport.closing
        session.connection_lost(None)
        assert session.closed.done()
        assert session.server.sessions == set()

    in_loop(body)


def test_replies_unread_stop_the_reading() -> None:
    """While the transport's buffer is full the session reads nothing more, and
    takes up the input again once the client reads."""

    async def body() -> None:
        session, transport = connected(FailingDeliverer())

        session.pause_writing()
        assert not transport.reading
        session.data_received(b"NOOP\r\n" * 3)
        assert bytes(transport.written) == GREETING

        session.resume_writing()
        assert bytes(transport.written) == GREETING + b"250 2.0.0 OK\r\n" * 3
        assert transport.reading

    in_loop(body)


def test_input_during_a_delivery_is_held_up_to_a_bound() -> None:
    """A client sending on while its message is being made durable: the input is
    kept for later, and past HELD_INPUT the session stops reading."""

    async def body() -> None:
        session, transport = connected(FailingDeliverer())
        session.delivering = asyncio.create_task(forever())

        session.data_received(b"NOOP\r\n")
        assert transport.reading
        session.data_received(b"x" * HELD_INPUT)
        assert not transport.reading
        assert bytes(transport.written) == GREETING

        session.delivering.cancel()

    in_loop(body)


def test_a_slow_delivery_is_not_an_idle_client() -> None:
    """The idle timer firing while a message is being made durable waits on; once
    the client is really silent past idle_timeout it gets 421 4.4.2."""

    async def body() -> None:
        session, transport = connected(FailingDeliverer())
        session.delivering = asyncio.create_task(forever())
        timeout = session.server.config.lmtp.idle_timeout

        session.since -= timeout + 1
        session._timer_fired()
        assert not transport.closing
        assert bytes(transport.written) == GREETING

        session.delivering.cancel()
        session.delivering = None
        session.since -= timeout + 1
        session._timer_fired()
        assert bytes(transport.written) == GREETING + replies.TIMEOUT.to_bytes()
        assert transport.closing

    in_loop(body)


class BrokenDeliverer:
    """Accepts the recipient and the body, then fails making it durable with a
    bug of ours (not an OSError, which the Deliverer answers itself)."""

    def check_recipient(self, txn: Any, address: str, size: object) -> object:
        txn.recipients.append(address)
        return replies.RCPT_OK, None

    def open_body(self, txn: object) -> None:
        return None

    def finish(self, txn: object, key: object) -> Iterator[object]:
        raise RuntimeError("delivery bug")
        yield


def test_fault_while_delivering_closes_with_421() -> None:
    """A delivery that fails with an exception of ours: no per-recipient reply
    that could pass for a verdict, but 421 4.3.0 and the connection closed."""

    async def body() -> None:
        session, transport = connected(BrokenDeliverer())
        transport.written.clear()

        session.data_received(
            b"LHLO client\r\nMAIL FROM:<a@b.example>\r\n"
            b"RCPT TO:<foo@abc.example>\r\nDATA\r\n"
        )
        session.data_received(b"Subject: x\r\n\r\nbody\r\n.\r\n")
        assert session.delivering is not None
        await asyncio.wait([session.delivering])

        lines = bytes(transport.written).decode().split("\r\n")
        assert lines[-4:] == [
            "250 2.1.5 <foo@abc.example> Recipient OK",
            "354 Start mail input; end with <CRLF>.<CRLF>",
            "421 4.3.0 Local error, closing connection",
            "",
        ]
        assert transport.closing and not transport.aborted

    in_loop(body)
