"""Listening sockets from the config's `unix:/path` and `inet:ADDRESS:PORT` forms.

Shared by the servers: a socket passed by systemd wins over opening one ourselves, and
a unix socket gets the mode and owner the config asks for, so Postfix's lmtp client
(which runs as the postfix user) can connect.
"""

import grp
import logging
import os
import pwd
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from mdcore.errors import ConfigError
from mdcore.systemd import inherited_sockets

log = logging.getLogger(__name__)

BACKLOG = 256


@dataclass(frozen=True)
class Listen:
    """One listening endpoint from the configuration."""

    spec: str
    path: Path | None = None
    host: str = ""
    port: int = 0


def parse_listen(spec: str) -> Listen:
    """Parse `unix:/path` or `inet:ADDRESS:PORT` (IPv6 in brackets or bare)."""
    kind, _, rest = spec.partition(":")
    if kind == "unix" and rest.startswith("/"):
        return Listen(spec, path=Path(rest))
    if kind == "inet":
        host, _, port = rest.rpartition(":")
        if host and port.isdigit():
            return Listen(spec, host=host.strip("[]"), port=int(port))
    raise ConfigError("listen", spec, "not unix:/path or inet:ADDRESS:PORT")


@dataclass(frozen=True)
class SocketOwner:
    """Mode and owner for unix sockets."""

    mode: int = 0o660
    user: str = ""
    group: str = ""


def open_listeners(specs: tuple[str, ...], owner: SocketOwner) -> list[socket.socket]:
    """Sockets for the specs, or the ones systemd passed in if there are any."""
    passed = inherited_sockets()
    if passed:
        log.info("using %d socket(s) passed by systemd", len(passed))
        return [sock for _name, sock in passed]
    return [open_listener(parse_listen(spec), owner) for spec in specs]


def open_listener(listen: Listen, owner: SocketOwner) -> socket.socket:
    """Bind and listen on one endpoint."""
    if listen.path is not None:
        return _open_unix(listen.path, owner)
    return _open_inet(listen.host, listen.port)


def _open_inet(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _open_unix(path: Path, owner: SocketOwner) -> socket.socket:
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, owner.mode)
        if owner.user or owner.group:
            os.chown(path, _uid(owner.user), _gid(owner.group))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _remove_stale_socket(path: Path) -> None:
    # Only a socket left by an earlier run is removed; any other file there is an
    # admin's mistake that must not be deleted silently.
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError("listen", str(path), "exists and is not a socket")
    path.unlink()


def _uid(user: str) -> int:
    if not user:
        return -1
    return int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid


def _gid(group: str) -> int:
    if not group:
        return -1
    return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid


def close_listeners(sockets: list[socket.socket]) -> None:
    """Close sockets and remove the files of unix ones we created."""
    for sock in sockets:
        name = sock.getsockname() if sock.family == socket.AF_UNIX else ""
        sock.close()
        if isinstance(name, str) and name.startswith("/"):
            Path(name).unlink(missing_ok=True)
