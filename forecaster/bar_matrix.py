"""Every feed's recent bars in one time-aligned matrix, so a boundary's batch is a view, not a copy.

The LSTM reads a day of 1-minute bars per feed (HAR's trailing means). Keeping one array per feed
and stacking 1000 of them at every boundary copied about 80 MB and cost more than the forward
pass; here row = feed and column = bar open time (``base_ms + column * interval``), the same for
every feed, so the histories of all feeds ending at one boundary are one slice of each column
plane. The matrix is pure (no I/O, no clock): ``bar_reader`` decides what to read and writes it
here.

Each feed holds the bars from ``first_ms`` to ``last_ms``, contiguous: a hole in what is written
(a bar missing from Redis: trimmed or hand-written data, since the streamer writes empty bars)
is filled the way the streamer would fill it, with no volume and the last close carried. The
matrix is ``look_back + spare`` columns wide; when the next bar would not fit, the columns are
shifted left (``make_room``, called after a boundary is published, so the copy stays off the
critical path).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from forecaster.features import Batch
from forecaster.frame import OPTIONAL_COLUMNS, BarFrame, FloatArray
from volcast.bar import EVENT_BAR_FIELDS
from volcast.keys import Feed

COLUMNS: tuple[str, ...] = EVENT_BAR_FIELDS
"""The float columns of a bar, in the order of ``values`` arguments (the planes of the matrix):
the values a bar's event carries, so that a column added here is carried too (bar_reader.py)."""
_CLOSE = COLUMNS.index("close")
_VOLUME = COLUMNS.index("volume")
_PRICES = tuple(COLUMNS.index(c) for c in ("open", "high", "low", "close"))
_LOG = len(COLUMNS)  # an extra plane: log1p(volume), computed once per bar instead of per boundary
_KNOWN = frozenset(OPTIONAL_COLUMNS)  # bars from Redis carry trades and buy volume


def log_volume(volume: FloatArray) -> FloatArray:
    """``Batch.log_volume``'s formula (a test checks that the two agree)."""
    return np.log1p(np.maximum(volume, 0.0))


@dataclass(frozen=True, slots=True)
class StoredBatch(Batch):
    """A Batch whose log volume was computed when its bars were stored (one bar per feed per
    boundary) rather than over the whole day of bars at every boundary."""

    stored_log_volume: FloatArray | None = None

    @property
    def log_volume(self) -> FloatArray:
        if self.stored_log_volume is None:
            return log_volume(self.volume)
        return self.stored_log_volume


class BarMatrix:
    """The last ``look_back`` (and up to ``spare`` more) bars of any number of feeds of one interval."""

    def __init__(self, interval_ms: int, look_back: int, *, spare: int = 240, rows: int = 64) -> None:
        if look_back < 1 or spare < 4:
            raise ValueError("need look_back >= 1 and spare >= 4")
        self.interval_ms = interval_ms
        self.look_back = look_back
        self.spare = spare
        self.width = look_back + spare
        self._planes = np.zeros((len(COLUMNS) + 1, rows, self.width))
        self._base_ms: int | None = None  # open time of column 0
        self._rows: dict[Feed, int] = {}
        self._first: dict[Feed, int] = {}
        self._last: dict[Feed, int] = {}
        self.newest_ms: int | None = None  # the newest bar written (of any feed)
        self.shifts = 0

    # -- what a feed holds ------------------------------------------------------------------------

    def last_ms(self, feed: Feed) -> int | None:
        return self._last.get(feed)

    def first_ms(self, feed: Feed) -> int | None:
        return self._first.get(feed)

    def available(self, feed: Feed, end_ms: int) -> int:
        """Contiguous bars held for ``feed`` ending with bar ``end_ms`` (0: that bar is not held)."""
        last = self._last.get(feed)
        if last is None or end_ms > last or end_ms < self._first[feed]:
            return 0
        return (end_ms - self._first[feed]) // self.interval_ms + 1

    def fits(self, end_ms: int, length: int | None = None) -> bool:
        """Whether ``length`` bars (default ``look_back``) ending with bar ``end_ms`` lie at or after
        column 0. Columns are shared by every feed, so a feed far behind the others (a replay of
        another day, a feed whose first hundreds of bars close at once) cannot be held with them."""
        if self._base_ms is None:
            return True
        return end_ms - ((length or self.look_back) - 1) * self.interval_ms >= self._base_ms

    def ending_at(self, end_ms: int) -> list[Feed]:
        """The feeds whose newest bar is ``end_ms``."""
        return [feed for feed, last in self._last.items() if last == end_ms]

    def forget(self, feed: Feed) -> None:
        self._first.pop(feed, None)
        self._last.pop(feed, None)

    def clear(self) -> None:
        self._first.clear()
        self._last.clear()
        self._base_ms = None
        self.newest_ms = None

    # -- writing ----------------------------------------------------------------------------------

    def append(self, feeds: Sequence[Feed], open_ms: int, values: FloatArray) -> None:
        """Bar ``open_ms`` of each feed, each the bar right after the feed's last one.

        ``values`` is ``(len(COLUMNS), len(feeds))``. The common case, one vectorised write for
        every feed of a boundary.
        """
        if not feeds:
            return
        if any(self._last.get(f) != open_ms - self.interval_ms for f in feeds):
            raise ValueError("append takes the bar right after each feed's last one")
        column = self._column_for(open_ms)
        rows = np.fromiter((self._rows[f] for f in feeds), dtype=np.intp, count=len(feeds))
        self._planes[:_LOG, rows, column] = values
        self._planes[_LOG, rows, column] = log_volume(values[_VOLUME])
        for feed in feeds:
            self._last[feed] = open_ms
        if self.newest_ms is None or open_ms > self.newest_ms:
            self.newest_ms = open_ms

    def write(self, feed: Feed, times: npt.NDArray[np.int64], values: FloatArray, *, continues: bool) -> None:
        """Bars of one feed, oldest first (``values`` is ``(len(COLUMNS), len(times))``).

        ``continues``: they follow the feed's last bar (a hole before them is a real hole, and is
        filled). Otherwise they replace what the feed held: the newest bars of a feed read afresh.
        """
        if len(times) == 0:
            return
        interval = self.interval_ms
        last = self._last.get(feed)
        carry: float | None = None
        if continues and last is not None:
            keep = times > last
            if not keep.any():
                return  # nothing newer than what is held
            times, values = times[keep], values[:, keep]
            start_ms, first_ms = last + interval, self._first[feed]
            carry = float(self._planes[_CLOSE, self._rows[feed], self._column(last)])
        else:
            continues = False
            start_ms = first_ms = int(times[0])
        if not continues and not self.fits(int(times[-1]), 1):
            return  # all older than column 0: the caller reads such a feed apart (``fits``)
        self._column_for(int(times[-1]))  # may shift the columns, and so drop old bars
        base = self._base_ms
        assert base is not None
        if int(times[0]) < base:
            keep = times >= base
            times, values = times[keep], values[:, keep]
        if continues:
            # A hole older than the matrix still counts as held (filled): the feed is contiguous.
            start_ms, first_ms = max(start_ms, base), max(first_ms, base)
        else:
            start_ms = first_ms = int(times[0])
        row = self._row(feed)
        block = _filled(times, values, start_ms, interval, carry)
        c0 = self._column(start_ms)
        self._planes[:_LOG, row, c0:c0 + block.shape[1]] = block
        self._planes[_LOG, row, c0:c0 + block.shape[1]] = log_volume(block[_VOLUME])
        self._first[feed] = first_ms
        self._last[feed] = int(times[-1])
        if self.newest_ms is None or self._last[feed] > self.newest_ms:
            self.newest_ms = self._last[feed]

    def make_room(self, next_ms: int) -> None:
        """Shift now if bar ``next_ms`` would not fit (call it between boundaries)."""
        if self._base_ms is not None and self._column(next_ms) >= self.width:
            self._shift_for(next_ms)

    # -- reading ----------------------------------------------------------------------------------

    def batch(self, feeds: Sequence[Feed], end_ms: int, length: int) -> tuple[list[Feed], StoredBatch]:
        """The last ``length`` bars ending with bar ``end_ms`` of every feed, as one Batch.

        Feeds come back in row order: when their rows are contiguous (all the feeds of a worker,
        the usual case) every array is a view of the matrix, no copy. Each feed must hold
        ``length`` bars there (``available``). The views are only valid until the next write.
        """
        if any(self.available(f, end_ms) < length for f in feeds):
            raise ValueError(f"a feed holds fewer than {length} bars ending at {end_ms}")
        ordered = self.in_row_order(feeds)
        rows = [self._rows[f] for f in ordered]
        stop = self._column(end_ms) + 1
        start = stop - length
        pick: slice | npt.NDArray[np.intp]
        if rows == list(range(rows[0], rows[0] + len(rows))):
            pick = slice(rows[0], rows[0] + len(rows))
        else:
            pick = np.array(rows, dtype=np.intp)
        planes = self._planes[:, pick, start:stop]
        base = self._base_ms
        assert base is not None
        times = base + self.interval_ms * np.arange(start, stop, dtype=np.int64)
        return ordered, StoredBatch(
            interval_ms=self.interval_ms,
            open_time_ms=np.broadcast_to(times, (len(rows), length)),
            high=planes[COLUMNS.index("high")],
            low=planes[COLUMNS.index("low")],
            close=planes[_CLOSE],
            volume=planes[_VOLUME],
            trades=planes[COLUMNS.index("trades")],
            buy_volume=planes[COLUMNS.index("buy_volume")],
            known=_KNOWN,
            stored_log_volume=planes[_LOG],
        )

    def in_row_order(self, feeds: Sequence[Feed]) -> list[Feed]:
        return sorted(feeds, key=self._rows.__getitem__)

    def volumes(self, feeds: Sequence[Feed], end_ms: int) -> FloatArray:
        """Volume of bar ``end_ms`` of each feed (each must hold it)."""
        rows = np.fromiter((self._rows[f] for f in feeds), dtype=np.intp, count=len(feeds))
        out: FloatArray = self._planes[_VOLUME, rows, self._column(end_ms)]
        return out

    def frame(self, feed: Feed, end_ms: int, length: int | None = None) -> BarFrame:
        """A copy of the feed's bars ending with ``end_ms`` (all it holds, or the last ``length``)."""
        n = self.available(feed, end_ms)
        n = n if length is None else min(n, length)
        if n < 1:
            raise ValueError(f"{feed} holds no bar at {end_ms}")
        stop = self._column(end_ms) + 1
        cols = self._planes[:_LOG, self._rows[feed], stop - n:stop].copy()
        times = end_ms - self.interval_ms * np.arange(n - 1, -1, -1, dtype=np.int64)
        return BarFrame(interval_ms=self.interval_ms, open_time_ms=times, known=_KNOWN,
                        **{name: cols[j] for j, name in enumerate(COLUMNS)})

    # -- layout -----------------------------------------------------------------------------------

    def _column(self, open_ms: int) -> int:
        assert self._base_ms is not None
        return (open_ms - self._base_ms) // self.interval_ms

    def _column_for(self, open_ms: int) -> int:
        """The column of bar ``open_ms``, shifting (or placing the first bar) so that it fits."""
        if self._base_ms is None:
            self._base_ms = open_ms - (self.look_back - 1) * self.interval_ms
        elif self._column(open_ms) >= self.width:
            self._shift_for(open_ms)
        return self._column(open_ms)

    def _shift_for(self, open_ms: int) -> None:
        """Move the columns left so that bar ``open_ms`` fits and the look_back bars before it
        (plus a quarter of the spare, for late events of slower feeds) stay."""
        assert self._base_ms is not None
        new_base = open_ms - (self.look_back - 1 + self.spare // 4) * self.interval_ms
        if new_base % self.interval_ms != self._base_ms % self.interval_ms:
            raise ValueError(f"bar {open_ms} is not aligned to the matrix's interval")
        shift = (new_base - self._base_ms) // self.interval_ms
        if shift <= 0:
            return
        if shift < self.width:
            kept = self.width - shift
            for plane in self._planes:  # one plane at a time: numpy's overlap copy is per call
                plane[:, :kept] = plane[:, shift:]
        self._base_ms = new_base
        for feed in list(self._last):
            if self._last[feed] < new_base:
                self.forget(feed)
            elif self._first[feed] < new_base:
                self._first[feed] = new_base
        self.shifts += 1

    def _row(self, feed: Feed) -> int:
        row = self._rows.get(feed)
        if row is None:
            row = len(self._rows)
            if row >= self._planes.shape[1]:
                grown = np.zeros((self._planes.shape[0], 2 * row, self.width))
                grown[:, :row] = self._planes
                self._planes = grown
            self._rows[feed] = row
        return row


def _filled(times: npt.NDArray[np.int64], values: FloatArray, start_ms: int, interval_ms: int,
            carry: float | None) -> FloatArray:
    """``values`` laid out on every interval from ``start_ms`` to the last time: a missing bar
    has no volume and the last close before it as its prices (``carry`` before the first)."""
    slots = (times - start_ms) // interval_ms
    total = int(slots[-1]) + 1
    if total == len(times):
        return values
    present = np.zeros(total, dtype=bool)
    present[slots] = True
    closes = np.zeros(total)
    closes[slots] = values[_CLOSE]
    source = np.maximum.accumulate(np.where(present, np.arange(total), -1))
    before = carry if carry is not None else float(values[_CLOSE, 0])
    carried = np.where(source >= 0, closes[np.maximum(source, 0)], before)
    out = np.zeros((len(COLUMNS), total))
    for j in _PRICES:
        out[j] = carried
    out[:, slots] = values
    return out
