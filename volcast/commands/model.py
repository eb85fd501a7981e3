"""``volcast model list`` and ``volcast model rollback VERSION``: the model store and the serving version."""

from __future__ import annotations

import argparse

from volcast.commands.common import add_config_argument, settings_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    sub = parser.add_subparsers(dest="action", metavar="<action>", required=True)
    sub.add_parser("list", help="versions in the model store; * marks the serving one")
    rollback = sub.add_parser("rollback", help="serve an earlier version (forecasters swap at the next bar)")
    rollback.add_argument("version", help="a version listed by `volcast model list`")


def main(args: argparse.Namespace) -> int:
    import asyncio

    from forecaster.model_commands import list_models, rollback

    settings = settings_from_args(args)
    if args.action == "list":
        print(asyncio.run(list_models(settings)))
        return 0
    ok, message = asyncio.run(rollback(settings, args.version))
    print(message)
    return 0 if ok else 1
