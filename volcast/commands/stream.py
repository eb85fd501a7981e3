"""``volcast stream``: run the ingester (exchange trades -> exact bars in Redis) until SIGINT/SIGTERM.

A signal cancels the service, which then flushes its closed bars (bounded) before exiting 0, so
a restart loses nothing.
"""

from __future__ import annotations

import argparse
import asyncio

from volcast.commands.common import add_config_argument, check_services, settings_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)


def main(args: argparse.Namespace) -> int:
    from streamer.service import run
    from volcast.signals import until_signalled

    settings = settings_from_args(args)
    check_services(settings, redis=True)
    return asyncio.run(until_signalled(run(settings), "stream"))
