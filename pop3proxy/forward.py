"""Proxy mode: a session whose domain lives on another server is relayed there.

Once the login names a domain whose binding has `forward_to`, the proxy
opens a POP3 connection to that server (typically another instance of this
proxy), hands over the client's address when the remote offers Dovecot's
XCLIENT, logs in as user@domain with the client's password and the client's
method, and from then on copies bytes both ways until either side closes.
The remote's own reply to the login goes to the client as it is.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
from dataclasses import dataclass, field

from pop3proxy import responses
from pop3proxy.auth import Outcome
from pop3proxy.events import LoginMethod
from pop3proxy.responses import Response

log = logging.getLogger(__name__)

RELAY_CHUNK = 64 * 1024
# RFC 2449 section 4: a response line is at most 512 octets; a little slack.
MAX_LINE = 1024
_CODE = re.compile(rb"-ERR \[([^\]]*)\]")

# Limitation: the hop to the remote is in cleartext, for a private network
# where the remote lists our address in its trusted_networks; STLS to the
# remote with a configured CA bundle would lift it.
# Limitation: this proxy does not itself accept XCLIENT, so a remote that is
# another instance of it logs and throttles the front proxy's address, not the
# client's (its per-account throttle still applies); an XCLIENT command in the
# core, honoured from trusted_networks only, would lift it.


@dataclass(frozen=True)
class RemoteLogin:
    """What the remote needs: its address, the qualified user, the password."""

    target: str
    user: str
    password: str = field(repr=False)
    method: LoginMethod
    client_host: str
    client_port: int


class ForwardError(Exception):
    """The remote cannot be reached or refused the login; holds our -ERR for it."""

    def __init__(self, outcome: Outcome, response: Response, detail: str) -> None:
        """Keep the outcome for the log, the reply for the client."""
        super().__init__(detail)
        self.outcome = outcome
        self.response = response


@dataclass
class Remote:
    """A logged-in connection to the remote server."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    welcome: bytes

    def close(self) -> None:
        """Close the connection; the remote then ends the session itself."""
        self.writer.close()


async def connect(login: RemoteLogin, timeout: float) -> Remote:
    """Open a session on the remote and log in; ForwardError on any failure."""
    host, _, port = login.target.rpartition(":")
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    except (OSError, TimeoutError, ValueError) as error:
        raise _unavailable(f"cannot connect to {login.target}: {error}") from None
    logged_in = False
    try:
        async with asyncio.timeout(timeout):
            welcome = await _log_in(reader, writer, login)
        logged_in = True
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as error:
        detail = str(error) or type(error).__name__
        raise _unavailable(f"{login.target}: {detail}") from None
    finally:
        if not logged_in:
            writer.close()
    return Remote(reader, writer, welcome)


async def _log_in(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, login: RemoteLogin
) -> bytes:
    await _status(reader)
    capabilities = await _capabilities(reader, writer)
    if "XCLIENT" in capabilities:
        await _xclient(reader, writer, login)
    method = _method(login, capabilities)
    if method is LoginMethod.USER_PASS:
        await _command(reader, writer, f"USER {login.user}", "USER")
        return await _command(reader, writer, f"PASS {login.password}", "PASS")
    identity = f"\0{login.user}\0{login.password}".encode("utf-8", "surrogateescape")
    sasl = base64.b64encode(identity).decode("ascii")
    return await _command(reader, writer, f"AUTH PLAIN {sasl}", "AUTH")


async def _capabilities(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> dict[str, str]:
    """RFC 2449 section 5: CAPA; an old server without it offers USER/PASS."""
    writer.write(b"CAPA\r\n")
    if not (await _status(reader)).startswith(b"+OK"):
        return {"USER": ""}
    found: dict[str, str] = {}
    while (line := await _line(reader)) != b".":
        name, _, value = line.decode("ascii", "replace").partition(" ")
        found[name.upper()] = value.upper()
    return found


def _method(login: RemoteLogin, capabilities: dict[str, str]) -> LoginMethod:
    """The client's own method if the remote offers it to us, else the other."""
    offered = []
    if "USER" in capabilities and not _breaks_line(login):
        offered.append(LoginMethod.USER_PASS)
    if "PLAIN" in capabilities.get("SASL", "").split():
        offered.append(LoginMethod.SASL_PLAIN)
    if not offered:
        raise _unavailable("the remote offers us no cleartext login (trusted_networks)")
    return login.method if login.method in offered else offered[0]


def _breaks_line(login: RemoteLogin) -> bool:
    """A SASL PLAIN password may hold CR or LF, which USER/PASS cannot carry."""
    return any(char in text for text in (login.user, login.password) for char in "\r\n")


async def _xclient(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, login: RemoteLogin
) -> None:
    """Dovecot's XCLIENT: the remote logs and throttles the real client address."""
    if not login.client_host:
        return
    writer.write(
        f"XCLIENT ADDR={login.client_host} PORT={login.client_port}\r\n".encode()
    )
    reply = await _status(reader)
    if not reply.startswith(b"+OK"):
        log.warning("remote refused XCLIENT: %s", reply.decode("ascii", "replace"))


async def _command(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: str, verb: str
) -> bytes:
    """Send one command; its +OK line with CRLF, or ForwardError for an -ERR."""
    writer.write(line.encode("utf-8", "surrogateescape") + b"\r\n")
    reply = await _status(reader)
    if reply.startswith(b"+OK"):
        return reply + b"\r\n"
    raise _refused(reply, verb)


def _refused(reply: bytes, verb: str) -> ForwardError:
    """Our own reply for the remote's -ERR, by its RFC 2449/3206 code."""
    match = _CODE.match(reply)
    code = match[1].decode("ascii", "replace").upper() if match else "AUTH"
    detail = f"remote refused {verb}: [{code}]"
    if code == "IN-USE":
        return ForwardError(Outcome.IN_USE, responses.MAILDROP_IN_USE, detail)
    if code == "LOGIN-DELAY":
        return ForwardError(Outcome.FAILED, responses.LOGIN_TOO_SOON, detail)
    if code == "SYS/PERM":
        return ForwardError(Outcome.DISABLED, responses.MAILBOX_DISABLED, detail)
    if code.startswith("SYS"):
        return ForwardError(Outcome.UNAVAILABLE, responses.AUTH_UNAVAILABLE, detail)
    return ForwardError(Outcome.FAILED, responses.AUTH_FAILED, detail)


def _unavailable(detail: str) -> ForwardError:
    return ForwardError(Outcome.UNAVAILABLE, responses.AUTH_UNAVAILABLE, detail)


async def _status(reader: asyncio.StreamReader) -> bytes:
    line = await _line(reader)
    if not line.startswith((b"+OK", b"-ERR")):
        raise ValueError("not a POP3 status line")
    return line


async def _line(reader: asyncio.StreamReader) -> bytes:
    """One CRLF-terminated line without its CRLF (a longer one is an error)."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise ValueError("line too long") from None
    if len(line) > MAX_LINE:
        raise ValueError("line too long")
    return line.rstrip(b"\r\n")


async def relay(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    remote: Remote,
    pending: bytes,
) -> tuple[int, int]:
    """Copy both ways until the remote closes; returns octets (up, down).

    When the client closes first, the remote is told by a half-close and
    finishes as it would with the client itself: RFC 1939 section 6 removes
    nothing without QUIT, and a QUIT already sent still completes.
    """
    octets = [len(pending), 0]
    remote.writer.write(pending)
    up = asyncio.create_task(_pipe(client_reader, remote.writer, octets, 0))
    down = asyncio.create_task(_pipe(remote.reader, client_writer, octets, 1))
    try:
        done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if up in done and not down.done():
            with contextlib.suppress(OSError):
                remote.writer.write_eof()
            await down
    finally:
        for task in (up, down):
            task.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
        remote.close()
    return octets[0], octets[1]


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    octets: list[int],
    direction: int,
) -> None:
    """Copy one direction chunk by chunk (memory stays at one chunk)."""
    with contextlib.suppress(OSError):
        while data := await reader.read(RELAY_CHUNK):
            writer.write(data)
            await writer.drain()
            octets[direction] += len(data)
