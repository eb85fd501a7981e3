"""``volcast stream``: run the ingester (exchange trades -> exact bars in Redis) until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from volcast.commands.common import add_config_argument, check_services, settings_from_args
from volcast.settings import Settings

log = logging.getLogger("volcast.stream")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)


async def _serve(settings: Settings) -> int:
    from streamer.service import run

    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    stopped: list[str] = []

    def stop(name: str) -> None:
        # A second signal while flushing is ignored: the flush is bounded and losing it loses bars.
        if not stopped:
            stopped.append(name)
            log.info("%s: stopping (flushing closed bars)", name)
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig.name)
    try:
        await run(settings)
    except asyncio.CancelledError:
        if not stopped:
            raise
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    return 0


def main(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    check_services(settings, redis=True)
    return asyncio.run(_serve(settings))
