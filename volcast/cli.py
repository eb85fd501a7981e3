"""``volcast <verb>``: one command line for every job a user runs.

Each verb lives in ``volcast/commands/<verb>.py`` with ``add_arguments(parser)`` and
``main(args) -> int``; those modules import their heavy dependencies (torch, ccxt) inside
``main`` so that ``volcast --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from volcast import __version__
from volcast.settings import ConfigError

# verb -> one-line help. Order is the order a newcomer meets them in.
VERBS: dict[str, str] = {
    "bars": "aggregate a trades CSV into exact time bars (offline)",
}

EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="volcast",
        description="Real-time forecasts of crypto trading volume: trades -> exact bars in Redis -> "
        "LSTM -> predictions on MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"volcast {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="verb", metavar="<verb>", required=True)
    for verb, summary in VERBS.items():
        module = importlib.import_module(f"volcast.commands.{verb}")
        verb_parser = sub.add_parser(verb, help=summary, description=summary)
        module.add_arguments(verb_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    module = importlib.import_module(f"volcast.commands.{args.verb}")
    try:
        return int(module.main(args))
    except ConfigError as exc:
        print(f"volcast {args.verb}: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
