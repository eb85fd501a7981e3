"""``volcast bars``: aggregate a trades CSV into exact bars, offline.

Exit codes (volcast/commands/exit_codes.py): 0 bars written; 1 the trades file or the output
cannot be used (one line on stderr saying which file, which line and what is wrong); 2 a bad
argument; 141 standard output closed by its reader (``volcast bars ... | head``, handled by the CLI).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from streamer.bars_csv import write_bars
from streamer.offline import aggregate_trades
from streamer.trade_validation import Refusal
from streamer.trades_csv import TradesFileError, read_trade_rows
from volcast.bar import Trade
from volcast.commands import exit_codes
from volcast.durations import parse_duration_ms
from volcast.settings import BarSettings

_BAD_ROWS_SHOWN = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trades", type=Path, required=True, metavar="FILE",
        help="trades CSV (timestamp_ms,trade_id,price,amount,side), gzip or plain",
    )
    parser.add_argument("--interval", default="1m", help="bar interval, 1s..1d dividing a day (default 1m)")
    parser.add_argument("--out", type=Path, metavar="FILE", help="write bars here (default: standard output)")
    parser.add_argument(
        "--skip-bad-rows", action="store_true",
        help="count and skip rows with a value that cannot be real (NaN, Infinity, negative, ...) and mark "
        "their bars gap, instead of refusing the file at the first one",
    )


class _Rows:
    """The file's rows as the aggregator takes them, counting the refused ones."""

    def __init__(self, path: Path, skip_bad: bool) -> None:
        self.path = path
        self.skip_bad = skip_bad
        self.refused = 0
        self.shown: list[str] = []

    def __iter__(self) -> Iterator[Trade | Refusal]:
        for line, checked in read_trade_rows(self.path):
            if isinstance(checked, Refusal):
                where = f"{self.path}:{line}: bad trade row: {checked}"
                if not self.skip_bad:
                    raise TradesFileError(f"{where} (--skip-bad-rows skips such rows and marks their bars gap)")
                self.refused += 1
                if len(self.shown) < _BAD_ROWS_SHOWN:
                    self.shown.append(where)
            yield checked


def main(args: argparse.Namespace) -> int:
    try:
        interval_ms = BarSettings(interval=args.interval, grace=0).interval
    except ValueError as exc:
        print(f"volcast bars: bad --interval {args.interval!r}: {_first_error(exc)}", file=sys.stderr)
        return exit_codes.USAGE
    rows = _Rows(args.trades, args.skip_bad_rows)
    try:
        # Opened first, so that a bad --out is said before the aggregation, and written under a
        # temporary name, so that a failure leaves no half file behind.
        with _output(args.out) as out:
            bars, aggregator = aggregate_trades(rows, interval_ms)
            write_bars(bars, out)
            out.flush()
    except TradesFileError as exc:
        print(f"volcast bars: {exc}", file=sys.stderr)
        return exit_codes.FAILED
    except BrokenPipeError:
        raise  # the reader of standard output is gone: the CLI ends quietly (exit code 141)
    except OSError as exc:
        print(f"volcast bars: cannot write {args.out or 'standard output'}: {exc.strerror or exc}", file=sys.stderr)
        return exit_codes.FAILED
    for line in rows.shown:
        print(f"volcast bars: skipped {line}", file=sys.stderr)
    skipped = f", {rows.refused} bad rows skipped (their bars say gap)" if rows.refused else ""
    print(
        f"volcast bars: {aggregator.trades} trades -> {len(bars)} bars of {parse_duration_ms(args.interval)} ms"
        f" ({aggregator.duplicates} duplicates dropped{skipped})",
        file=sys.stderr,
    )
    return 0


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[IO[str]]:
    if path is None:
        yield sys.stdout
        return
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with temporary.open("w", encoding="utf-8", newline="") as out:
            yield out
        temporary.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        return str(errors()[0]["msg"]).removeprefix("Value error, ")
    return str(exc)
