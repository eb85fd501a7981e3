"""asyncio helpers every service loop needs."""

from __future__ import annotations

import asyncio


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that a library swallowed.

    A retry loop must end when its task is cancelled, but some awaits can eat the CancelledError:
    aiomqtt's ``__aexit__`` turns a cancelled disconnect into an ``MqttError``, and Python 3.11's
    ``asyncio.wait_for`` returns the result when cancellation races with completion. The task
    still counts the request (``cancelling()``), so a loop that checks before each retry shuts
    down instead of reconnecting forever.

    Only for loops whose body runs no TaskGroup: in Python 3.11 a TaskGroup whose child failed
    can leave the enclosing task's count raised, and this check would then end a loop that was
    only reconnecting (seen in the streamer's feed loop).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
