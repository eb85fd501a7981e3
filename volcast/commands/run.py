"""``volcast run``: the whole pipeline on one machine (streamer + forecaster, refit as a child process)."""

from __future__ import annotations

import argparse

from volcast.commands.common import add_config_argument, check_services, settings_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.epilog = ("Prometheus metrics: with metrics.enabled in the config, the streamer, the forecaster and "
                     "the refit child serve /metrics on metrics.stream_port, forecast_port and refit_port, as "
                     "three separate processes would (README \"Metrics\").")


def main(args: argparse.Namespace) -> int:
    import asyncio

    import torch

    from volcast.signals import until_signalled
    from volcast.single_machine import run

    settings = settings_from_args(args)
    check_services(settings, redis=True, mqtt=True)
    torch.set_num_threads(settings.forecaster.threads)
    return asyncio.run(until_signalled(run(settings, args.config), "run"))
