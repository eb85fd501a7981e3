"""asyncio helpers every service loop needs."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that a library swallowed.

    A retry loop must end when its task is cancelled, but some awaits can eat the CancelledError:
    aiomqtt's ``__aexit__`` turns a cancelled disconnect into an ``MqttError``, Python 3.11's
    ``asyncio.wait_for`` returns the result when cancellation races with completion, and redis-py
    (8.1, hiredis) sometimes returns a blocking XREADGROUP's reply to a task being cancelled (the
    forecaster's consume loop then read on for ever: half the runs of one test). The task
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
