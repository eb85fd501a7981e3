"""``volcast run``: streamer, forecaster and refit together on one machine.

Wiring of both sides, so it lives in ``volcast/``: ``forecaster/`` and ``streamer/`` never import
each other.

The streamer and the forecaster share this process's event loop; the refit worker is a child
process (``volcast refit``) so that its torch training threads never compete with inference
threads. A refit process that dies is restarted with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from volcast.backoff import Backoff
from volcast.settings import Settings

log = logging.getLogger(__name__)


async def supervise_refit(config: Path) -> None:
    """Keep one ``volcast refit`` child running; it is terminated when this task is cancelled."""
    backoff = Backoff(1.0, 60.0)
    while True:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "volcast.cli", "refit", "--config", str(config))
        log.info("refit worker started (pid %d)", process.pid)
        try:
            code = await process.wait()
        except asyncio.CancelledError:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 10)
                except TimeoutError:
                    process.kill()
            raise
        delay = backoff.next_delay()
        log.error("refit worker exited with code %s; restarting in %.0f s", code, delay)
        await asyncio.sleep(delay)


async def run(settings: Settings, config: Path) -> None:
    from forecaster.worker import run as forecast
    from streamer.service import run as stream

    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(stream(settings), name="streamer")
        tasks.create_task(forecast(settings), name="forecaster")
        tasks.create_task(supervise_refit(config), name="refit")
