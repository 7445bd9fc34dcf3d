"""End to end: lmtpd with lmtp.workers = 2, its parent and the pre-forked workers."""

import os
import signal
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.lmtp_process import LmtpProcess, free_port
from tests.lmtp_wire import (
    GREETING,
    SENDER,
    Wire,
    envelope,
    lhlo_reply,
    refused,
    saved,
    send_message,
    wait_until,
)

WORKERS = 2
EXIT_DEADLINE = 10.0
ROUNDS = 12


@pytest.fixture
def workers_server(tmp_path: Path) -> Iterator[LmtpProcess]:
    """A configured lmtpd with two workers and two accounts; started by the test."""
    server = LmtpProcess(tmp_path / "lmtpd", workers=WORKERS)
    for address in ("foo@abc.example", "foo@xyz.example"):
        server.add_account(address)
    try:
        yield server
    finally:
        if server.process is not None:
            server.stop()
        server.close_notify()


def children(pid: int) -> set[int]:
    """The pids whose parent is pid, from /proc."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry))
    return found


def parent_pid(server: LmtpProcess) -> int:
    assert server.process is not None
    return server.process.pid


def alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def deliver(server: LmtpProcess, address: str, ident: str = "") -> None:
    """One message to address on a connection of its own."""
    with Wire.greeted(server) as wire:
        if ident:
            wire.send(f"XFORWARD IDENT={ident}\r\n".encode())
            assert wire.reply() == "250 2.0.0 OK"
        assert send_message(wire, [address]) == [saved(address)]


def test_workers_deliver_on_shared_listeners(workers_server: LmtpProcess) -> None:
    """Two workers under one parent; every connection, TCP or unix, is served."""
    workers_server.start()
    workers = children(parent_pid(workers_server))
    assert len(workers) == WORKERS

    for _ in range(ROUNDS):
        deliver(workers_server, "foo@abc.example")
        with Wire.unix(workers_server.socket_path) as wire:
            assert wire.reply() == GREETING
            wire.send(b"LHLO client.example\r\n")
            assert wire.reply() == lhlo_reply()
            assert send_message(wire, ["foo@xyz.example"]) == [saved("foo@xyz.example")]

    assert len(workers_server.messages("foo@abc.example")) == ROUNDS
    assert len(workers_server.messages("foo@xyz.example")) == ROUNDS
    assert f"lmtpd: {WORKERS} of {WORKERS} worker(s) ready" in workers_server.log_text()


def test_sigterm_stops_every_worker(workers_server: LmtpProcess) -> None:
    """SIGTERM: the listeners close at once, the workers finish, the parent exits 0."""
    workers_server.start()
    workers = children(parent_pid(workers_server))
    with Wire.greeted(workers_server) as sending:
        sending.send(envelope(SENDER, "foo@abc.example") + b"DATA\r\n")
        sending.replies(3)
        sending.send(b"Subject: in flight\r\n\r\n")

        workers_server.signal(signal.SIGTERM)
        wait_until(lambda: refused(workers_server.port), "the listener to close")
        sending.send(b"the rest\r\n.\r\n")
        assert sending.reply() == saved("foo@abc.example")

    assert workers_server.process is not None
    assert workers_server.process.wait(EXIT_DEADLINE) == 0
    workers_server.process = None
    assert not any(alive(pid) for pid in workers)
    assert not workers_server.socket_path.exists()
    assert len(workers_server.messages("foo@abc.example")) == 1


def test_a_dead_worker_is_replaced(workers_server: LmtpProcess) -> None:
    """A worker killed with SIGKILL: the parent logs it and forks another."""
    workers_server.start()
    parent = parent_pid(workers_server)
    victim = min(children(parent))
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        now = children(parent)
        return len(now) == WORKERS and victim not in now

    wait_until(replaced, "a new worker")
    assert f"(pid {victim}) exited with status -9; replacing it" in (
        workers_server.log_text()
    )
    for _ in range(ROUNDS):
        deliver(workers_server, "foo@abc.example")
    assert len(workers_server.messages("foo@abc.example")) == ROUNDS


def test_workers_die_with_their_parent(workers_server: LmtpProcess) -> None:
    """The parent killed with SIGKILL takes its workers along: the port is free."""
    workers_server.start()
    workers = children(parent_pid(workers_server))
    workers_server.kill()

    wait_until(lambda: not any(alive(pid) for pid in workers), "the workers to end")
    wait_until(lambda: port_free(workers_server.port), "the port to be free")


def port_free(port: int) -> bool:
    """True if a new server could listen on the TCP port (as a restart would)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_a_retry_is_one_copy_whichever_worker_takes_it(
    workers_server: LmtpProcess,
) -> None:
    """The same MTA queue id on many connections: both workers, one file in new/."""
    workers_server.start()
    # Every worker reads the Maildir's tags first (its own view from then on).
    for number in range(ROUNDS):
        deliver(workers_server, "foo@abc.example", ident=f"WARM{number}")
    for _ in range(ROUNDS):
        deliver(workers_server, "foo@abc.example", ident="4XyZ1")

    tagged = [
        line for line in workers_server.log_text().splitlines() if "4XyZ1" in line
    ]
    assert len(workers_server.messages("foo@abc.example")) == ROUNDS + 1
    assert sum("status=duplicate" in line for line in tagged) == ROUNDS - 1


def test_sighup_reaches_every_worker(workers_server: LmtpProcess) -> None:
    """SIGHUP to the parent: each worker reloads, so a new account works anywhere."""
    workers_server.start()
    workers_server.add_account("new@abc.example")
    workers_server.signal(signal.SIGHUP)

    def reloaded() -> bool:
        return workers_server.log_text().count("configuration reloaded") == WORKERS

    wait_until(reloaded, "both workers to reload")
    for _ in range(ROUNDS):
        deliver(workers_server, "new@abc.example")
    assert len(workers_server.messages("new@abc.example")) == ROUNDS


def test_metrics_are_summed_over_the_workers(tmp_path: Path) -> None:
    """One /metrics page, served by the parent, counts what every worker did."""
    port = free_port()
    server = LmtpProcess(
        tmp_path / "lmtpd", workers=WORKERS, metrics_listen=f"127.0.0.1:{port}"
    )
    server.add_account("foo@abc.example")
    try:
        server.start()
        for _ in range(ROUNDS):
            deliver(server, "foo@abc.example")
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
    finally:
        server.stop()
        server.close_notify()
    delivered = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "mdmail_lmtp_recipients_total"
        and sample.labels == {"domain": "abc.example", "outcome": "delivered"}
    ]
    assert delivered == [ROUNDS]
