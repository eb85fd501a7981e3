"""``volcast forecast``: the inference worker (bar-closed events -> predictions on MQTT and Redis)."""

from __future__ import annotations

import argparse

from volcast.commands.common import add_config_argument, add_metrics_argument, serve, settings_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    add_metrics_argument(parser, "forecast")
    parser.add_argument("--consumer", default=None,
                        help="consumer name in the Redis group (default: forecaster.consumer or <host>-<pid>)")


def main(args: argparse.Namespace) -> int:
    import torch

    from forecaster.worker import run

    settings = settings_from_args(args)
    # Inference threads only; training runs in its own process (volcast refit) with its own count.
    torch.set_num_threads(settings.forecaster.threads)
    return serve(settings, lambda: run(settings, consumer=args.consumer), "forecast", mqtt=True)
