"""``volcast <verb>``: one command line for every job a user runs.

Each verb lives in ``volcast/commands/<verb>.py`` with ``add_arguments(parser)`` and
``main(args) -> int``; those modules import their heavy dependencies (torch, ccxt) inside
``main`` so that ``volcast --help`` stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from volcast import __version__
from volcast.commands import exit_codes
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

EXIT_CONFIG = exit_codes.USAGE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="volcast",
        description="Real-time forecasts of crypto trading volume: trades -> exact bars in Redis -> "
        "LSTM -> predictions on MQTT.",
        epilog=exit_codes.HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"volcast {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log debug messages; an unexpected error shows its traceback")
    sub = parser.add_subparsers(dest="verb", metavar="<verb>", required=True)
    for verb, summary in VERBS.items():
        module = importlib.import_module(f"volcast.commands.{verb}")
        verb_parser = sub.add_parser(verb, help=summary, description=summary)
        module.add_arguments(verb_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb. Whatever goes wrong ends in one line on stderr and a documented exit code
    (volcast/commands/exit_codes.py); only ``-v`` shows a traceback."""
    try:
        code = _run(argv)
        # A closed pipe shows up at the last flush: let that happen here, not at interpreter exit.
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _discard_stdout()
        return exit_codes.BROKEN_PIPE


def _run(argv: Sequence[str] | None) -> int:
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
    except KeyboardInterrupt:
        return exit_codes.INTERRUPTED
    except Exception as exc:  # every verb: one line and an exit code, the traceback only with -v
        error = _leaf(exc)
        if isinstance(error, BrokenPipeError):
            raise error from None
        if isinstance(error, ConfigError):
            print(f"volcast {args.verb}: configuration error: {error}", file=sys.stderr)
            return EXIT_CONFIG
        if args.verbose:
            raise
        print(f"volcast {args.verb}: {_describe(error)}", file=sys.stderr)
        return exit_codes.FAILED


def _leaf(exc: BaseException) -> BaseException:
    """The error that matters inside an ExceptionGroup (a TaskGroup's): the first one that is not
    a cancellation."""
    while isinstance(exc, BaseExceptionGroup):
        inner = [e for e in exc.exceptions if not isinstance(e, asyncio.CancelledError)]
        exc = (inner or list(exc.exceptions))[0]
    return exc


def _describe(error: BaseException) -> str:
    if isinstance(error, ConnectionProblem):
        return str(error)  # already says what to set
    redis_errors = sys.modules.get("redis.exceptions")
    if redis_errors is not None and isinstance(error, redis_errors.AuthenticationError):
        return (f"Redis refused us ({error}): set VOLCAST_REDIS_PASSWORD (and VOLCAST_REDIS_USERNAME for an "
                "ACL user) to what the server expects")
    if redis_errors is not None and isinstance(error, (redis_errors.ConnectionError, redis_errors.TimeoutError)):
        return (f"lost the connection to Redis ({error}): is Redis running, and are redis.url / "
                "VOLCAST_REDIS_URL right?")
    aiomqtt = sys.modules.get("aiomqtt")
    if aiomqtt is not None and isinstance(error, aiomqtt.MqttError):
        return (f"MQTT failed ({error}): is the broker running, and are mqtt.url / VOLCAST_MQTT_URL and its "
                "credentials right?")
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    name = type(error).__name__
    return f"unexpected {name}: {error} (run `volcast -v ...` to see where; please report it)"


def _discard_stdout() -> None:
    """Nothing reads standard output any more: point it at /dev/null, so that the interpreter's
    own flush at exit does not raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
