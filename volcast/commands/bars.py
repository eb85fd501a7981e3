"""``volcast bars``: aggregate a trades CSV into exact bars, offline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamer.bars_csv import write_bars
from streamer.offline import aggregate_trades
from streamer.trades_csv import TradesFileError, read_trades
from volcast.durations import parse_duration_ms
from volcast.settings import BarSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trades", type=Path, required=True, metavar="FILE",
        help="trades CSV (timestamp_ms,trade_id,price,amount,side), gzip or plain",
    )
    parser.add_argument("--interval", default="1m", help="bar interval, 1s..1d dividing a day (default 1m)")
    parser.add_argument("--out", type=Path, metavar="FILE", help="write bars here (default: standard output)")


def main(args: argparse.Namespace) -> int:
    try:
        interval_ms = BarSettings(interval=args.interval, grace=0).interval
    except ValueError as exc:
        print(f"volcast bars: bad --interval {args.interval!r}: {_first_error(exc)}", file=sys.stderr)
        return 2
    try:
        bars, aggregator = aggregate_trades(read_trades(args.trades), interval_ms)
    except TradesFileError as exc:
        print(f"volcast bars: {exc}", file=sys.stderr)
        return 1
    if args.out is None:
        write_bars(bars, sys.stdout)
    else:
        with args.out.open("w", encoding="utf-8", newline="") as out:
            write_bars(bars, out)
    print(
        f"volcast bars: {aggregator.trades} trades -> {len(bars)} bars of {parse_duration_ms(args.interval)} ms"
        f" ({aggregator.duplicates} duplicates dropped)",
        file=sys.stderr,
    )
    return 0


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        return str(errors()[0]["msg"]).removeprefix("Value error, ")
    return str(exc)
