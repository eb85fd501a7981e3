"""``volcast stream``: run the ingester (exchange trades -> exact bars in Redis) until SIGINT/SIGTERM.

A signal cancels the service, which then flushes its closed bars (bounded) before exiting 0, so
a restart loses nothing. ``--leases`` (or ``streamer.leases: true``) shares the feeds with the other
streamers started so (README "Scaling out").
"""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from volcast.commands.common import add_config_argument, add_metrics_argument, serve, settings_from_args
from volcast.settings import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument(
        "--leases", action="store_true",
        help="share the configured feeds with the other `volcast stream --leases` processes on the same Redis: "
        "each feed is streamed by one of them, a dead one's feeds are taken over within "
        "streamer.lease_ttl + streamer.lease_renew (as streamer.leases: true)",
    )
    parser.add_argument("--name", help="this streamer's name in the leases and `volcast status` "
                        "(as streamer.name; default host:pid:random)")
    add_metrics_argument(parser, "stream")


def main(args: argparse.Namespace) -> int:
    from streamer.service import run

    settings = settings_from_args(args)
    if args.leases or args.name:
        updates: dict[str, object] = {"leases": True} if args.leases else {}
        if args.name:
            updates["name"] = args.name
        try:
            streamer = type(settings.streamer).model_validate({**settings.streamer.model_dump(), **updates})
        except ValidationError as error:
            reason = "; ".join(e["msg"] for e in error.errors())
            raise ConfigError(f"--name {args.name!r}: {reason} (a name without spaces or braces, "
                              "at most 100 characters)") from None
        settings = settings.model_copy(update={"streamer": streamer})
    return serve(settings, lambda: run(settings), "stream")
