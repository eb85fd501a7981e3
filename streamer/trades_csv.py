"""Trades CSV files (``timestamp_ms,trade_id,price,amount,side``; gzip or plain) read as exact Trades.

Every row goes through ``check_trade`` (streamer/trade_validation.py), the check the live feed
applies too. ``read_trade_rows`` gives each row's Trade or Refusal with its line; ``read_trades``
refuses the file at its first bad row. A file that cannot be read as text CSV (truncated or
corrupt gzip, binary, not UTF-8) raises ``TradesFileError`` naming the file and the line reached.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from streamer.trade_validation import Refusal, check_trade
from volcast.bar import Trade

TRADE_COLUMNS = ("timestamp_ms", "trade_id", "price", "amount", "side")


class TradesFileError(ValueError):
    """A trades file that cannot be read; the message names the file and line."""


def open_text(path: Path) -> IO[str]:
    """Open a plain or gzip-compressed text file, told apart by content rather than by name."""
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def read_trade_rows(path: Path) -> Iterator[tuple[int, Trade | Refusal]]:
    """Yield ``(line, Trade or Refusal)`` for each row in file order (blank rows skipped)."""
    try:
        handle = open_text(path)
    except OSError as exc:
        raise TradesFileError(f"{path}: cannot open: {exc.strerror or exc}") from None
    line = 0  # of the last row read: a read that fails is on the next one
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None or tuple(h.strip() for h in header[: len(TRADE_COLUMNS)]) != TRADE_COLUMNS:
                raise TradesFileError(
                    f"{path}: expected a header starting {','.join(TRADE_COLUMNS)}, got {_shown(header)}"
                )
            for row in reader:
                line = reader.line_num
                if not row:
                    continue
                timestamp, trade_id, price, amount, side = (row + [""] * 5)[:5]
                yield line, check_trade(timestamp, trade_id, price, amount, side)
        except UnicodeDecodeError:
            raise TradesFileError(f"{path}:{line + 1}: not UTF-8 text: is this a trades CSV?") from None
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise TradesFileError(f"{path}:{line + 1}: truncated or corrupt gzip ({exc})") from None
        except csv.Error as exc:
            raise TradesFileError(f"{path}:{line + 1}: not CSV ({exc}): is this a trades CSV?") from None
        except OSError as exc:
            raise TradesFileError(f"{path}:{line + 1}: cannot read: {exc.strerror or exc}") from None


def read_trades(path: Path) -> Iterator[Trade]:
    """Yield the file's trades in file order; the first bad row raises TradesFileError naming it."""
    for line, checked in read_trade_rows(path):
        if isinstance(checked, Refusal):
            raise TradesFileError(f"{path}:{line}: bad trade row: {checked}")
        yield checked


def _shown(header: list[str] | None) -> str:
    text = repr(header)
    return text if len(text) <= 120 else text[:117] + "..."
