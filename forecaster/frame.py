"""``BarFrame``: a symbol's bars as numpy columns, the unit every forecaster function works on.

Bars come from Redis (``volcast.bar.Bar``, exact Decimals) or from CSV files. Forecasting only
needs floats, and vectorised numpy over columns is what keeps feature building fast, so the
Decimals are converted once here. Columns a source does not carry (``trades``, ``buy_volume`` in
the plain OHLCV files) are zeros, and ``known`` says which optional columns are real.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from volcast.bar import Bar

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

OPTIONAL_COLUMNS: tuple[str, ...] = ("trades", "buy_volume")
_PLAIN_HEADER = ("timestamp_ms", "open", "high", "low", "close", "volume")


class FrameError(ValueError):
    """Bars that cannot form a frame (unsorted, misaligned, unreadable file)."""


@dataclass(frozen=True, slots=True, eq=False)
class BarFrame:
    """Contiguous bars of one symbol, oldest first, one numpy array per column.

    ``interval_ms`` is the bar length; ``open_time_ms`` increases by exactly that much from one
    row to the next (missing intervals are filled as zero-volume bars on construction).
    """

    interval_ms: int
    open_time_ms: IntArray
    open: FloatArray
    high: FloatArray
    low: FloatArray
    close: FloatArray
    volume: FloatArray
    trades: FloatArray
    buy_volume: FloatArray
    known: frozenset[str] = field(default_factory=frozenset)
    # Market-wide inputs (forecaster/market.py), one row per target position 0..len: row p is
    # what a forecast of bar p reads, computed from every feed's bars before it (so the bar after
    # the frame has a row too). None: computed from this feed alone, i.e. none.
    market: FloatArray | None = None

    def __post_init__(self) -> None:
        n = len(self.open_time_ms)
        if self.market is not None and (self.market.ndim != 2 or self.market.shape[0] != n + 1):
            raise FrameError(f"market inputs have shape {self.market.shape}, expected ({n + 1}, inputs)")
        for name in ("open", "high", "low", "close", "volume", "trades", "buy_volume"):
            if len(getattr(self, name)) != n:
                raise FrameError(f"column {name} has {len(getattr(self, name))} rows, expected {n}")
        if n > 1 and np.any(np.diff(self.open_time_ms) != self.interval_ms):
            raise FrameError("bars are not contiguous at the frame's interval")
        unknown = self.known - set(OPTIONAL_COLUMNS)
        if unknown:
            raise FrameError(f"unknown optional columns {sorted(unknown)}")

    def __len__(self) -> int:
        return len(self.open_time_ms)

    def __getitem__(self, index: slice) -> BarFrame:
        if not isinstance(index, slice) or (index.step not in (None, 1)):
            raise TypeError("a BarFrame is sliced by a contiguous slice of rows")
        start, stop, _ = index.indices(len(self))
        stop = max(start, stop)
        return BarFrame(
            interval_ms=self.interval_ms,
            open_time_ms=self.open_time_ms[index],
            open=self.open[index],
            high=self.high[index],
            low=self.low[index],
            close=self.close[index],
            volume=self.volume[index],
            trades=self.trades[index],
            buy_volume=self.buy_volume[index],
            known=self.known,
            market=None if self.market is None else self.market[start : stop + 1],
        )

    def tail(self, n: int) -> BarFrame:
        return self[max(0, len(self) - n) :]

    @property
    def end_ms(self) -> int:
        """Close time of the last bar (open time of the next one)."""
        return int(self.open_time_ms[-1]) + self.interval_ms if len(self) else 0

    @staticmethod
    def concat(frames: Sequence[BarFrame]) -> BarFrame:
        """Join frames that follow each other in time; a hole between them is filled with empty bars."""
        frames = [f for f in frames if len(f)]
        if not frames:
            raise FrameError("nothing to concatenate")
        interval = frames[0].interval_ms
        if any(f.interval_ms != interval for f in frames):
            raise FrameError("frames have different intervals")
        known = frozenset.intersection(*(f.known for f in frames))
        cols = {name: np.concatenate([getattr(f, name) for f in frames]) for name in _COLUMNS}
        return _filled(interval, cols, known)

    @classmethod
    def from_bars(cls, bars: Iterable[Bar], interval_ms: int | None = None) -> BarFrame:
        """From exact bars (Redis, the aggregator); Decimals become floats here, once."""
        rows = list(bars)
        if not rows:
            raise FrameError("no bars")
        times = np.fromiter((b.open_time_ms for b in rows), dtype=np.int64, count=len(rows))
        interval = interval_ms or _infer_interval(times)
        cols: dict[str, npt.NDArray[np.generic]] = {"open_time_ms": times}
        for name in ("open", "high", "low", "close", "volume"):
            cols[name] = np.fromiter((float(getattr(b, name)) for b in rows), dtype=np.float64, count=len(rows))
        # A history bar may lack them (volcast/bar.py HISTORY_MAY_LACK): known only if every bar has them.
        known = frozenset(n for n in OPTIONAL_COLUMNS if all(getattr(b, n) is not None for b in rows))
        for name in OPTIONAL_COLUMNS:
            cols[name] = np.fromiter((float(getattr(b, name) or 0) for b in rows), dtype=np.float64, count=len(rows))
        return _filled(interval, cols, known)

    @classmethod
    def from_csv(cls, path: str | Path, interval_ms: int | None = None) -> BarFrame:
        """Read a bars CSV (gzip or plain): the shared 6-column OHLCV format or `volcast bars`' format.

        A missing interval (sparse sources write only bars with trades) becomes a zero-volume
        bar whose prices are the last close. The interval is inferred when not given.
        """
        path = Path(path)
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8")
        reader = csv.reader(io.StringIO(text))
        try:
            header = tuple(next(reader))
        except StopIteration:
            raise FrameError(f"{path}: empty file") from None
        if header[:6] != _PLAIN_HEADER:
            raise FrameError(f"{path}: expected a header starting with {','.join(_PLAIN_HEADER)}, got {header}")
        index = {name: i for i, name in enumerate(header)}
        try:
            table = np.loadtxt(io.StringIO(text), delimiter=",", skiprows=1, dtype=np.float64,
                               usecols=[index[c] for c in _PLAIN_HEADER[1:]], ndmin=2)
            times = np.loadtxt(io.StringIO(text), delimiter=",", skiprows=1, dtype=np.int64, usecols=[0], ndmin=1)
        except ValueError as exc:
            raise FrameError(f"{path}: unreadable row: {exc}") from None
        if len(times) == 0:
            raise FrameError(f"{path}: no bars")
        cols: dict[str, npt.NDArray[np.generic]] = {"open_time_ms": times}
        for j, name in enumerate(("open", "high", "low", "close", "volume")):
            cols[name] = table[:, j].copy()
        known: set[str] = set()
        for name in OPTIONAL_COLUMNS:
            if name in index:
                cols[name] = np.loadtxt(io.StringIO(text), delimiter=",", skiprows=1, dtype=np.float64,
                                        usecols=[index[name]], ndmin=1)
                known.add(name)
        try:
            return _filled(interval_ms or _infer_interval(times), cols, frozenset(known))
        except FrameError as exc:
            raise FrameError(f"{path}: {exc}") from None


_COLUMNS = ("open_time_ms", "open", "high", "low", "close", "volume", "trades", "buy_volume")


def _infer_interval(times: IntArray) -> int:
    if len(times) < 2:
        raise FrameError("cannot infer the interval from fewer than two bars: pass it")
    steps = np.diff(times)
    if np.any(steps <= 0):
        raise FrameError("bar times are not strictly increasing")
    # The smallest step is the interval; a sparse file's larger steps are multiples of it.
    return int(steps.min())


def _filled(interval: int, cols: dict[str, npt.NDArray[np.generic]], known: frozenset[str]) -> BarFrame:
    times = np.asarray(cols["open_time_ms"], dtype=np.int64)
    n = len(times)
    zeros = np.zeros(n)
    full = {name: np.asarray(cols.get(name, zeros), dtype=np.float64) for name in _COLUMNS[1:]}
    if n and np.any(times % interval != 0) and interval <= 86_400_000 and 86_400_000 % interval == 0:
        raise FrameError(f"bar times are not aligned to the {interval} ms interval")
    steps = np.diff(times)
    if np.any(steps <= 0):
        raise FrameError("bar times are not strictly increasing")
    if np.any(steps % interval != 0):
        raise FrameError(f"bar times are not multiples of the {interval} ms interval apart")
    if n and np.any(steps != interval):
        slots = ((times - times[0]) // interval).astype(np.int64)
        total = int(slots[-1]) + 1
        present = np.zeros(total, dtype=bool)
        present[slots] = True
        # Index of the last present bar at or before each slot: an empty bar carries its close.
        last = np.maximum.accumulate(np.where(present, np.arange(total), 0))
        src = np.searchsorted(slots, last)
        close = full["close"][src]
        out: dict[str, FloatArray] = {}
        for name in ("open", "high", "low", "close"):
            out[name] = np.where(present, 0.0, close)
            out[name][slots] = full[name]
        for name in ("volume", "trades", "buy_volume"):
            out[name] = np.zeros(total)
            out[name][slots] = full[name]
        times = times[0] + np.arange(total, dtype=np.int64) * interval
        full = out
    return BarFrame(interval_ms=interval, open_time_ms=times, known=known, **full)
