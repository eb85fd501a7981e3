"""asyncio helpers every service loop needs."""

from __future__ import annotations

import asyncio
import asyncio.tasks
import sys
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def _wait_for(awaitable: Awaitable[T], timeout: float | None) -> T:  # noqa: ASYNC109
    """Python 3.12's ``asyncio.wait_for``: ``asyncio.timeout`` around the await."""
    if timeout is not None and timeout <= 0:
        future = asyncio.ensure_future(awaitable)
        if future.done():
            return future.result()
        future.cancel()
        await asyncio.wait([future])
        try:
            return future.result()
        except asyncio.CancelledError as exc:
            raise TimeoutError from exc
    async with asyncio.timeout(timeout):
        return await awaitable


def backport_wait_for() -> None:
    """Replace Python 3.11's ``asyncio.wait_for`` by 3.12's, for every library in the process.

    3.11's returns the inner result when its task is cancelled just as the inner future completes,
    so the cancellation is lost (CPython gh-86296, fixed in 3.12 by this rewrite). redis-py 8 wraps
    every command it sends in ``wait_for(..., socket_timeout)`` (5 s by default), where the inner
    write completes at once: measured here, 3 of 4 cancellations of a task looping over PING were
    lost, and a cancelled forecaster worker read on for ever (a CI failure). aiomqtt waits for
    its acknowledgements the same way. Libraries look ``asyncio.wait_for`` up at call time, so
    replacing the module attribute reaches them; it is done on import of volcast.connections.
    """
    if sys.version_info < (3, 12) and asyncio.wait_for is not _wait_for:
        asyncio.wait_for = _wait_for  # type: ignore[assignment]
        asyncio.tasks.wait_for = _wait_for  # type: ignore[assignment]


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that a library swallowed.

    A retry loop must end when its task is cancelled, but some awaits can eat the CancelledError:
    aiomqtt's ``__aexit__`` turns a cancelled disconnect into an ``MqttError``, and anything built
    on Python 3.11's ``asyncio.wait_for`` (see ``backport_wait_for``) can return normally. The task
    still counts the request (``cancelling()``), so a loop that checks before each retry shuts
    down instead of reconnecting forever.

    Only for loops whose body runs no TaskGroup (use ``until_first_ends`` there): in Python 3.11
    a TaskGroup whose child fails while the parent waits in ``__aexit__`` cancels the parent and
    never uncancels it, and this check would then end a loop that was only reconnecting (seen in
    the streamer's feed loop).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def until_first_ends(*coroutines: Coroutine[Any, Any, None]) -> None:
    """Run the coroutines as tasks until one ends, cancel and await the rest, re-raise its error.

    What ``async with TaskGroup()`` does for tasks that live as long as a connection, without
    touching the calling task's cancellation count (see ``raise_if_cancelled``).
    """
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
    for task in tasks:  # in argument order, so the result does not depend on set ordering
        error = task.exception() if task in done and not task.cancelled() else None
        if error is not None:
            raise error
