"""libmilter's listening socket, opened before the milter runs, with no Nagle delay.

libmilter writes each reply and each end-of-message action (a header added, a
recipient changed) as a small packet of its own, on a socket where Nagle's
algorithm (RFC 896) holds a small packet back while the one before it is not yet
acknowledged. The MTA, which sends nothing until the final reply, acknowledges
late (delayed ACK, RFC 1122 section 4.2.3.2; up to 40 ms on Linux). Every message
whose header the milter changes, so every message to our domains, waited that long
at its end: on a busy MTA that, not CPU, capped the messages per second.

libmilter sets no TCP_NODELAY and pymilter does not show its sockets. So the
listening socket is opened here, before Milter.runmilter() (which then finds it
open and uses it), and TCP_NODELAY set on it: the connections it accepts inherit
the option (Linux and the BSDs do).
"""

import logging
import os
import re
import socket

import Milter

log = logging.getLogger(__name__)

# The TCP port of libmilter's inet:PORT@HOST and inet6:PORT@HOST forms.
_INET_PORT = re.compile(r"inet6?:(\d+)")


def open_listener(name: str, spec: str) -> None:
    """Have libmilter open its socket for `spec` now, with Nagle's algorithm off."""
    # libmilter opens the socket of the connection registered last; runmilter()
    # registers again, with the callbacks, and keeps the socket already open.
    Milter.milter.setconn(spec)
    Milter.milter.register(name)
    Milter.milter.opensocket(True)
    port = _INET_PORT.match(spec)
    if port is None:
        return  # a unix socket: no Nagle's algorithm there
    found = _listening_on(int(port[1]))
    for descriptor in found:
        _no_delay(descriptor)
    if not found:
        log.warning("milter: no listening socket found to set TCP_NODELAY on")


def _no_delay(descriptor: int) -> None:
    listener = socket.socket(fileno=descriptor)
    try:
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    finally:
        listener.detach()  # libmilter's socket: not ours to close


def _listening_on(port: int) -> list[int]:
    """This process's listening TCP sockets on `port` (Linux /proc/self/fd)."""
    # Limitation: Linux only; elsewhere nothing is found, a warning says so and
    # the delay stays. Listing /dev/fd, or a libmilter that sets TCP_NODELAY
    # itself, would lift it.
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return []
    found = []
    for name in names:
        try:
            candidate = socket.socket(fileno=int(name))
        except OSError:
            continue  # not a socket, or the descriptor of the listing itself
        try:
            if _is_listener(candidate, port):
                found.append(candidate.fileno())
        finally:
            candidate.detach()
    return found


def _is_listener(candidate: socket.socket, port: int) -> bool:
    try:
        listening = candidate.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        address = candidate.getsockname()
    except OSError:
        return False
    families = (socket.AF_INET, socket.AF_INET6)
    return bool(listening) and candidate.family in families and address[1] == port
