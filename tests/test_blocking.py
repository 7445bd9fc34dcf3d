"""The worker threads behind the servers' blocking calls (mdcore.blocking)."""

import asyncio
import threading

import pytest

from mdcore.blocking import BlockingPool


def test_result_and_exception_come_back() -> None:
    """The call runs in another thread; its value or its exception reach the caller."""
    pool = BlockingPool(2, "test")

    def fail() -> None:
        raise OSError(5, "Input/output error")

    async def calls() -> tuple[int, str]:
        name = await pool.run(lambda: threading.current_thread().name)
        value = await pool.run(divmod, 7, 2)
        with pytest.raises(OSError, match="Input/output"):
            await pool.run(fail)
        return value[0], name

    try:
        assert asyncio.run(calls()) == (3, "test_0")
    finally:
        pool.shutdown()


def test_threads_start_as_calls_wait_up_to_the_limit() -> None:
    """Three calls that wait for one another each get a thread, up to the limit."""
    pool = BlockingPool(3, "test")
    barrier = threading.Barrier(3, timeout=5)

    async def calls() -> list[int]:
        return await asyncio.gather(*(pool.run(barrier.wait) for _ in range(3)))

    try:
        assert sorted(asyncio.run(calls())) == [0, 1, 2]
        assert len(pool._threads) == 3
    finally:
        pool.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        asyncio.run(pool.run(int))


def test_a_cancelled_caller_leaves_the_call_to_finish() -> None:
    """Cancelling the awaiting task drops the result; the pool goes on working."""
    pool = BlockingPool(1, "test")
    release = threading.Event()
    finished = threading.Event()

    def slow() -> int:
        release.wait(5)
        finished.set()
        return 1

    async def calls() -> int:
        task = asyncio.ensure_future(pool.run(slow))
        await asyncio.sleep(0.01)
        task.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await pool.run(int, "2")

    try:
        assert asyncio.run(calls()) == 2
        assert finished.is_set()
    finally:
        pool.shutdown()


def test_stop_iteration_is_not_swallowed() -> None:
    """A future cannot hold StopIteration: the caller gets a RuntimeError instead."""
    pool = BlockingPool(1, "test")
    try:
        with pytest.raises(RuntimeError, match="StopIteration"):
            asyncio.run(pool.run(next, iter(())))
    finally:
        pool.shutdown()


def test_a_submitted_call_keeps_its_result_for_a_shielded_caller() -> None:
    """submit(): the caller cancelled while shielding the future still finds
    the result there (what the POP3 server needs to close a maildrop it opened
    for a session that went away)."""
    pool = BlockingPool(1, "test")
    release = threading.Event()

    async def calls() -> int:
        future = pool.submit(lambda: release.wait(5) and 42)
        waiter = asyncio.ensure_future(asyncio.shield(future))
        await asyncio.sleep(0)
        waiter.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        return await future

    try:
        assert asyncio.run(calls()) == 42
        assert pool._in_flight == 0
    finally:
        pool.shutdown()
