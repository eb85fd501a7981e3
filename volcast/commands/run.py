"""``volcast run``: the whole pipeline on one machine (streamer + forecaster, refit as a child process)."""

from __future__ import annotations

import argparse

from volcast.commands.common import add_config_argument, serve, settings_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.epilog = ("Prometheus metrics: with metrics.enabled in the config, the streamer, the forecaster and "
                     "the refit child serve /metrics on metrics.stream_port, forecast_port and refit_port, as "
                     "three separate processes would (README \"Metrics\").")


def main(args: argparse.Namespace) -> int:
    import torch

    from volcast.single_machine import run

    settings = settings_from_args(args)
    torch.set_num_threads(settings.forecaster.threads)
    return serve(settings, lambda: run(settings, args.config), "run", mqtt=True)
