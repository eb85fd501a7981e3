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
from volcast.connections import ConnectionProblem
from volcast.settings import ConfigError

# verb -> one-line help. Order is the order a newcomer meets them in.
VERBS: dict[str, str] = {
    "demo": "the whole pipeline offline on real recorded trades, with a live table of predictions",
    "run": "streamer, forecaster and refit together on one machine",
    "stream": "run the ingester: exchange trades (ccxt pro) -> exact bars in Redis, until SIGINT/SIGTERM",
    "forecast": "run the forecaster worker: bar-closed events -> batched forecasts -> MQTT + Redis",
    "refit": "retrain a challenger on the bars in Redis and promote it if it scores better (--once)",
    "status": "show feeds, bars, forecasts, model and refit from Redis (table, --json, --watch)",
    "model": "list model versions in the store, or roll back to one",
    "replay": "serve recorded trades as a local Binance-compatible exchange (REST + websocket)",
    "bars": "aggregate a trades CSV into exact time bars (offline)",
    "train": "train a forecasting model on bars files and write its artifact",
    "backtest": "train on the first part of a bars file and score one-step forecasts on the rest",
    "tune": "search model settings with time-series cross-validation; prints YAML for config.yml",
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
    except ConnectionProblem as exc:
        print(f"volcast {args.verb}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
