"""Trades CSV files (``timestamp_ms,trade_id,price,amount,side``; gzip or plain) read as exact Trades."""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO

from volcast.bar import Side, Trade

TRADE_COLUMNS = ("timestamp_ms", "trade_id", "price", "amount", "side")
_SIDES: dict[str, Side | None] = {"buy": "buy", "sell": "sell", "": None}


class TradesFileError(ValueError):
    """A trades file that cannot be read; the message names the file and line."""


def open_text(path: Path) -> IO[str]:
    """Open a plain or gzip-compressed text file, told apart by content rather than by name."""
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def read_trades(path: Path) -> Iterator[Trade]:
    """Yield the file's trades in file order; a malformed row raises TradesFileError naming it."""
    try:
        handle = open_text(path)
    except OSError as exc:
        raise TradesFileError(f"{path}: cannot open: {exc.strerror or exc}") from None
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header[: len(TRADE_COLUMNS)]) != TRADE_COLUMNS:
            raise TradesFileError(f"{path}: expected a header starting {','.join(TRADE_COLUMNS)}, got {header}")
        for row in reader:
            if not row:
                continue
            try:
                timestamp, trade_id, price, amount, side = row[:5]
                yield Trade(int(timestamp), int(trade_id), Decimal(price), Decimal(amount), _SIDES[side.strip()])
            except (ValueError, KeyError, InvalidOperation):
                raise TradesFileError(f"{path}:{reader.line_num}: malformed trade row {row!r}") from None
