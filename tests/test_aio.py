"""Cancellation reaches our loops through the libraries that used to swallow it."""

from __future__ import annotations

import asyncio

import pytest

import volcast.connections  # noqa: F401  (installs the wait_for backport, as every service does)
from volcast.aio import raise_if_cancelled, until_first_ends
from volcast.connections import redis_client
from volcast.settings import RedisSettings


async def test_cancellation_racing_with_completion_is_not_swallowed() -> None:
    """The exact race of Python 3.11's wait_for: the inner future completes as the task is cancelled."""
    loop = asyncio.get_running_loop()
    inner: asyncio.Future[str] = loop.create_future()
    waiting = asyncio.create_task(asyncio.wait_for(inner, 5))
    await asyncio.sleep(0)  # the task now waits on inner
    inner.set_result("done")
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_wait_for_still_times_out() -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.sleep(1), 0.01)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.sleep(1), 0)
    assert await asyncio.wait_for(asyncio.sleep(0, "x"), 1) == "x"


async def test_a_cancelled_redis_loop_always_stops() -> None:
    """redis-py 8 sends every command through wait_for: 3 of 4 of these cancellations were lost."""
    lost = 0
    async with redis_client(RedisSettings()) as redis:

        async def ping_forever() -> None:
            nonlocal lost
            while True:
                await redis.ping()
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    lost += 1
                    return

        for i in range(100):
            task = asyncio.create_task(ping_forever())
            await asyncio.sleep(0.0005 * (i % 7))
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=5)
            assert done, "a cancelled PING loop did not stop"
    assert lost == 0


async def test_until_first_ends_reraises_and_leaves_no_cancellation_behind() -> None:
    stopped: list[str] = []

    async def fails() -> None:
        await asyncio.sleep(0.01)
        raise ValueError("connection lost")

    async def forever() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            stopped.append("forever")

    with pytest.raises(ValueError, match="connection lost"):
        await until_first_ends(fails(), forever())
    assert stopped == ["forever"]
    raise_if_cancelled()  # a TaskGroup in 3.11 would have left this task's count raised here


async def test_until_first_ends_passes_cancellation_on() -> None:
    stopped: list[str] = []

    async def forever(name: str) -> None:
        try:
            await asyncio.sleep(60)
        finally:
            stopped.append(name)

    task = asyncio.create_task(until_first_ends(forever("a"), forever("b")))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(stopped) == ["a", "b"]
