"""``volcast model list``, ``rollback VERSION`` and ``import DIR``: the model store and the serving version."""

from __future__ import annotations

import argparse
from pathlib import Path

from volcast.commands.common import add_config_argument, check_services, settings_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    sub = parser.add_subparsers(dest="action", metavar="<action>", required=True)
    listing = sub.add_parser("list", help="versions in the model store; * marks the serving one")
    rollback = sub.add_parser("rollback", help="serve an earlier version (forecasters swap at the next bar)")
    rollback.add_argument("version", help="a version listed by `volcast model list`")
    imported = sub.add_parser("import", help="add a `volcast train` artifact to the store, checked against the config")
    imported.add_argument("directory", type=Path, metavar="DIR", help="the --out DIR of `volcast train`")
    imported.add_argument("--promote", action="store_true", help="serve it at once (else: `model rollback N` later)")
    for action in (listing, rollback, imported):  # `volcast model list --config X` as well as `model --config X list`
        add_config_argument(action, inherited=True)


def main(args: argparse.Namespace) -> int:
    import asyncio

    from forecaster.model_commands import list_models, rollback
    from forecaster.model_import import import_model

    settings = settings_from_args(args)
    # One message for a Redis that is down or refuses the credentials, before any work.
    check_services(settings, redis=True, keep_retrying=False)
    if args.action == "list":
        print(asyncio.run(list_models(settings)))
        return 0
    if args.action == "import":
        ok, message = asyncio.run(import_model(settings, args.directory, serve=args.promote))
    else:
        ok, message = asyncio.run(rollback(settings, args.version))
    print(message)
    return 0 if ok else 1
