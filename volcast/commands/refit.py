"""``volcast refit [--once]``: train challengers on the bars in Redis and promote the better ones."""

from __future__ import annotations

import argparse

from volcast.commands.common import add_config_argument, add_metrics_argument, check_services, serve, settings_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    add_metrics_argument(parser, "refit")
    parser.add_argument("--once", action="store_true",
                        help="run one refit now and exit (exit code 1 if it failed)")


def main(args: argparse.Namespace) -> int:
    import asyncio

    import torch

    from forecaster.refit import run
    from volcast.status_render import refit_outcome

    settings = settings_from_args(args)
    # Its own process and thread count, so training never competes with inference threads.
    torch.set_num_threads(settings.refit.threads)
    if args.once:
        check_services(settings, redis=True, keep_retrying=False)
        outcome = asyncio.run(run(settings, once=True))
        if outcome is not None:
            print(refit_outcome(outcome.result, outcome.message))
        return 1 if outcome is None or outcome.result == "failed" else 0

    async def forever() -> None:
        await run(settings)

    return serve(settings, forever, "refit")
