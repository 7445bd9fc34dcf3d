"""systemd socket activation and readiness notification, with the standard library.

sd_listen_fds(3): the sockets start at file descriptor 3, their number in LISTEN_FDS,
their names in LISTEN_FDNAMES, and they are meant for us only if LISTEN_PID is our
pid. sd_notify(3): a datagram such as "READY=1" to the socket named in NOTIFY_SOCKET.
"""

import os
import socket
from collections.abc import Mapping

FIRST_FD = 3


def inherited_sockets(
    environ: Mapping[str, str] | None = None,
) -> list[tuple[str, socket.socket]]:
    """Sockets passed by systemd, as (name, socket); empty when not socket-activated."""
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(env.get("LISTEN_FDS", "0") or 0)
    names = env.get("LISTEN_FDNAMES", "").split(":")
    found = []
    for index in range(count):
        fd = FIRST_FD + index
        os.set_inheritable(fd, False)
        name = names[index] if index < len(names) else ""
        found.append((name, socket.socket(fileno=fd)))
    return found


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send a state line ("READY=1", "STOPPING=1", "STATUS=...") to systemd, if any."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        # An abstract socket name: a NUL byte in place of the "@".
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as channel:
        channel.connect(address)
        channel.sendall(state.encode("utf-8"))
    return True
