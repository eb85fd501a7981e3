"""Run a service coroutine until SIGINT or SIGTERM, shutting it down by cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


async def until_signalled(service: Coroutine[Any, Any, None], name: str) -> int:
    """Await ``service``; a signal cancels it (a clean stop, exit code 0)."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    stopped: list[str] = []

    def stop(signame: str) -> None:
        if not stopped:
            stopped.append(signame)
            log.info("%s: %s, stopping", name, signame)
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig.name)
    try:
        await service
    except asyncio.CancelledError:
        if not stopped:
            raise
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    return 0
