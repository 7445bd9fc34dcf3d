"""libmilter's listening socket, opened by us before runmilter(), without Nagle."""

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.lmtp_process import free_port

REPO = Path(__file__).resolve().parent.parent

# Run in a child: libmilter keeps its socket for the life of the process.
CHILD = """
import socket, sys
from mdmilter.listener import _listening_on, open_listener

open_listener("mdmilter-test", sys.argv[1])
(found,) = _listening_on(int(sys.argv[2]))
listener = socket.socket(fileno=found)
client = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
accepted, _ = listener.accept()
for sock in (listener, accepted):
    print(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0)
"""


def run_child(*args: str) -> subprocess.CompletedProcess[str]:
    """The child script above, with args, from the repository."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )


def test_inet_listener_and_its_connections_send_without_delay() -> None:
    """inet:PORT@127.0.0.1: TCP_NODELAY on the listener and on what it accepts."""
    port = free_port()
    done = run_child(f"inet:{port}@127.0.0.1", str(port))
    assert (done.returncode, done.stdout) == (0, "True\nTrue\n"), done.stderr
