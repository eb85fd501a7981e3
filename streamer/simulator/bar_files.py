"""Real 1-minute bar files the simulator serves as the history before its trade tape.

Format: the shared data's ``timestamp_ms,open,high,low,close,volume`` (bar open time; gzip or
plain), optionally followed by the columns ``volcast bars`` writes: ``quote_volume``, ``trades``
and ``buy_volume`` are then served too (Binance's quote volume, trade count and taker buy
volume); files without them give candles that lack them, as they are (never made up). Minutes a
sparse file leaves out had no trades: they are served as empty candles at the last close.

Rows are kept as their text (one string per bar: a month of 1-minute bars is 43,200 of them) and
split when served. Every row is checked at load, so a file that cannot be served is refused
with its ``file:line`` instead of failing a request later.
"""

from __future__ import annotations

import csv
import itertools
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from streamer.simulator.tape import normalise_symbol, symbol_from_filename
from streamer.trades_csv import open_text

MINUTE_MS = 60_000
_REQUIRED = ("timestamp_ms", "open", "high", "low", "close", "volume")
_OPTIONAL = ("quote_volume", "trades", "buy_volume")
SERVED = (*_REQUIRED[1:], *_OPTIONAL)
"""Fields of ``BarFile.row``: open, high, low, close, volume, then quote volume, trades, buy volume
("" where the file has no such column)."""


class BarFileError(ValueError):
    """A bar file that cannot be served; the message names the file (and line)."""


@dataclass(frozen=True, slots=True)
class BarFile:
    """One symbol's 1-minute bars, oldest first, as recorded (``times`` are the file's)."""

    symbol: str
    times: tuple[int, ...]
    rows: tuple[str, ...]
    """Per bar, the fields of ``SERVED`` joined by commas."""
    source: str

    def row(self, index: int) -> list[str]:
        return self.rows[index].split(",")

    def last_before(self, time_ms: int) -> int:
        """Index of the last bar opening at or before ``time_ms`` (-1: none)."""
        return bisect_right(self.times, time_ms) - 1

    def first_from(self, time_ms: int) -> int:
        return bisect_left(self.times, time_ms)


def _number(text: str, name: str, where: str, *, integer: bool = False) -> None:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise BarFileError(f"{where}: {name} {text!r} is not a number") from None
    if not value.is_finite() or value < 0 or (name in ("open", "high", "low", "close") and value == 0):
        raise BarFileError(f"{where}: {name} {text!r} cannot be real")
    if integer and value != value.to_integral_value():
        raise BarFileError(f"{where}: {name} {text!r} is not a whole number")


def load_bar_file(path: str | Path, symbol: str | None = None) -> BarFile:
    """Read and check one bar file; the symbol comes from ``symbol`` or else the file name."""
    path = Path(path)
    try:
        unified = normalise_symbol(symbol) if symbol else symbol_from_filename(path)
    except ValueError as exc:
        raise BarFileError(f"{path}: {exc}") from None
    times: list[int] = []
    rows: list[str] = []
    try:
        with open_text(path) as handle:
            reader = csv.reader(handle)
            header = [h.strip() for h in next(reader, [])]
            if tuple(header[: len(_REQUIRED)]) != _REQUIRED:
                raise BarFileError(f"{path}: expected a header starting {','.join(_REQUIRED)}, got {header[:8]}")
            extra = [header.index(name) if name in header else None for name in _OPTIONAL]
            for row in reader:
                if not row:
                    continue
                where = f"{path}:{reader.line_num}"
                try:
                    stamp = int(row[0])
                except (ValueError, IndexError):
                    raise BarFileError(f"{where}: timestamp_ms {row[:1]} is not an integer") from None
                if stamp % MINUTE_MS:
                    raise BarFileError(f"{where}: {stamp} is not the open time of a 1-minute bar")
                if times and stamp <= times[-1]:
                    raise BarFileError(f"{where}: {stamp} does not follow {times[-1]}: bars must be in time order")
                values = row[1:6]
                if len(values) < 5:
                    raise BarFileError(f"{where}: expected {len(_REQUIRED)} columns, got {len(row)}")
                for name, text in zip(_REQUIRED[1:], values, strict=True):
                    _number(text, name, where)
                for name, index in zip(_OPTIONAL, extra, strict=True):
                    text = row[index] if index is not None and index < len(row) else ""
                    if text:
                        _number(text, name, where, integer=name == "trades")
                    values.append(text)
                times.append(stamp)
                rows.append(",".join(values))
    except OSError as exc:
        raise BarFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, EOFError, csv.Error) as exc:
        raise BarFileError(f"{path}: not a bars CSV ({exc})") from None
    if not times:
        raise BarFileError(f"{path}: no bars")
    return BarFile(unified, tuple(times), tuple(rows), str(path))


def parse_history_argument(text: str) -> tuple[str | None, Path]:
    """``FILE`` or ``SYMBOL=FILE`` (the symbol as BTC/USDT or BTCUSDT)."""
    symbol, sep, file_name = text.partition("=")
    if sep and symbol and file_name and not Path(text).exists():
        return symbol, Path(file_name)
    return None, Path(text)


def load_bar_files(arguments: Sequence[str]) -> dict[str, BarFile]:
    """Each ``--history`` argument read; the files of one symbol joined in time order (they must
    not overlap; minutes between two files are served as empty candles)."""
    per_symbol: dict[str, list[BarFile]] = {}
    for argument in arguments:
        symbol, path = parse_history_argument(argument)
        bar_file = load_bar_file(path, symbol)
        per_symbol.setdefault(bar_file.symbol, []).append(bar_file)
    out: dict[str, BarFile] = {}
    for symbol, files in per_symbol.items():
        files.sort(key=lambda f: f.times[0])
        for before, after in itertools.pairwise(files):
            if after.times[0] <= before.times[-1]:
                raise BarFileError(f"{after.source} overlaps {before.source} (both {symbol})")
        out[symbol] = BarFile(
            symbol,
            tuple(t for f in files for t in f.times),
            tuple(r for f in files for r in f.rows),
            " + ".join(f.source for f in files),
        )
    return out
