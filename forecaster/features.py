"""Features of bars, computed with numpy over a whole batch of symbols at once.

Everything here is causal: the features of the bar at row ``t`` use rows ``<= t`` only, and the
HAR regressors for a *target* position ``p`` use rows ``< p`` only. So computing them on a
whole file and reading them at a position gives exactly what a live worker computes from the
history that ends just before that position (the backtest relies on this).

Arrays are 2-D ``(symbols, bars)``: a batch of equal-length histories from the inference worker,
or one long frame (``symbols == 1``) in training and backtests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from forecaster.frame import BarFrame, FloatArray, IntArray
from volcast.settings import Feature

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
# HAR windows in bars: the last bar, then means over these recent spans (the last one is a day
# of 1-minute bars).
HAR_WINDOWS: tuple[int, ...] = (5, 15, 60, 240, 1440)
HAR_HISTORY = max(HAR_WINDOWS)
HAR_NAMES: tuple[str, ...] = ("last", *(f"mean_{w}" for w in HAR_WINDOWS), "time_of_day")
# abs_return and range are a few basis points: scaled so log1p spreads them out.
_BP = 1e4


@dataclass(frozen=True, slots=True)
class MarketInputs:
    """Market-wide inputs (forecaster/market.py) of a batch's target positions.

    ``values[:, j]`` are the inputs for a target at position ``start + j`` (computed from every
    feed's bars before that position): ``(symbols, targets, inputs)``. A training frame covers
    every position of the frame (``start`` 0); the live worker only the bar after the batch.
    """

    start: int
    values: FloatArray

    def at(self, positions: IntArray) -> FloatArray:
        """``(symbols, positions, inputs)``; ValueError for a position it does not cover."""
        index = positions - self.start
        if len(index) and (index.min() < 0 or index.max() >= self.values.shape[1]):
            raise ValueError(f"market inputs cover positions {self.start}..{self.start + self.values.shape[1] - 1}")
        return self.values[:, index]

    def from_position(self, start: int) -> MarketInputs:
        """The same inputs with positions counted from ``start`` (``Batch.bars_from``)."""
        if self.start >= start:
            return MarketInputs(self.start - start, self.values)
        return MarketInputs(0, self.values[:, start - self.start :])


@dataclass(frozen=True, slots=True)
class Batch:
    """Equal-length histories of several symbols as ``(symbols, bars)`` arrays.

    ``market``: the market-wide inputs of its targets when they were computed across feeds
    (forecaster/market.py); None where there were none (a single feed), read as zeros.
    """

    interval_ms: int
    open_time_ms: IntArray
    high: FloatArray
    low: FloatArray
    close: FloatArray
    volume: FloatArray
    trades: FloatArray
    buy_volume: FloatArray
    known: frozenset[str]
    market: MarketInputs | None = None

    @property
    def log_volume(self) -> FloatArray:
        return np.log1p(np.maximum(self.volume, 0.0))

    def bars_from(self, start: int) -> Batch:
        """The same histories from bar ``start`` on (views, no copy)."""
        market = None if self.market is None else self.market.from_position(start)
        return self._select((slice(None), slice(start, None)), market)

    def rows(self, index: IntArray) -> Batch:
        """The histories at ``index`` (fancy indexing: a copy)."""
        market = None if self.market is None else MarketInputs(self.market.start, self.market.values[index])
        return self._select(index, market)

    def _select(self, index: IntArray | tuple[slice, slice], market: MarketInputs | None) -> Batch:
        return Batch(
            interval_ms=self.interval_ms,
            open_time_ms=self.open_time_ms[index],
            high=self.high[index],
            low=self.low[index],
            close=self.close[index],
            volume=self.volume[index],
            trades=self.trades[index],
            buy_volume=self.buy_volume[index],
            known=self.known,
            market=market,
        )

    @classmethod
    def stack(cls, frames: Sequence[BarFrame], length: int | None = None) -> Batch:
        """The last ``length`` bars (default: the shortest frame's length) of every frame."""
        if not frames:
            raise ValueError("no frames")
        n = min(len(f) for f in frames) if length is None else length
        if any(len(f) < n for f in frames):
            raise ValueError(f"every history needs at least {n} bars")
        interval = frames[0].interval_ms
        if any(f.interval_ms != interval for f in frames):
            raise ValueError("histories have different bar intervals")

        def col(name: str) -> FloatArray:
            return np.stack([getattr(f, name)[len(f) - n :] for f in frames])

        # A frame's market inputs have a row per target position 0..len (forecaster/frame.py).
        markets = [f.market[len(f) - n :] for f in frames if f.market is not None]
        market = None
        if len(markets) == len(frames) and len({m.shape[1] for m in markets}) == 1:
            market = MarketInputs(0, np.stack(markets))

        return cls(
            interval_ms=interval,
            open_time_ms=np.stack([f.open_time_ms[len(f) - n :] for f in frames]),
            high=col("high"),
            low=col("low"),
            close=col("close"),
            volume=col("volume"),
            trades=col("trades"),
            buy_volume=col("buy_volume"),
            known=frozenset.intersection(*(f.known for f in frames)),
            market=market,
        )


def usable_features(features: Sequence[Feature], known: frozenset[str]) -> tuple[Feature, ...]:
    """The configured features this data can supply (trades, buy_share need those columns)."""
    needs: dict[str, str] = {"trades": "trades", "buy_share": "buy_volume"}
    return tuple(f for f in features if f not in needs or needs[f] in known)


def feature_columns(features: Sequence[Feature]) -> tuple[str, ...]:
    """Column names of the per-bar matrix: the cyclical features take two columns each."""
    out: list[str] = []
    for f in features:
        out.extend([f"{f}_sin", f"{f}_cos"] if f in ("time_of_day", "day_of_week") else [f])
    return tuple(out)


def per_bar(batch: Batch, features: Sequence[Feature]) -> FloatArray:
    """Raw (not yet normalised) features of every bar: ``(symbols, bars, columns)``."""
    cols: list[FloatArray] = []
    for f in features:
        if f == "log_volume":
            cols.append(batch.log_volume)
        elif f == "trades":
            cols.append(np.log1p(np.maximum(batch.trades, 0.0)))
        elif f == "buy_share":
            with np.errstate(divide="ignore", invalid="ignore"):
                share = np.where(batch.volume > 0, batch.buy_volume / batch.volume, 0.5)
            cols.append(share)
        elif f == "abs_return":
            logc = np.log(np.maximum(batch.close, 1e-300))
            ret = np.zeros_like(logc)
            ret[:, 1:] = np.abs(np.diff(logc, axis=1))
            cols.append(np.log1p(_BP * ret))
        elif f == "range":
            with np.errstate(divide="ignore", invalid="ignore"):
                rng = np.where(batch.close > 0, (batch.high - batch.low) / batch.close, 0.0)
            cols.append(np.log1p(_BP * np.maximum(rng, 0.0)))
        elif f == "time_of_day":
            angle = 2 * np.pi * (batch.open_time_ms % DAY_MS) / DAY_MS
            cols.extend([np.sin(angle), np.cos(angle)])
        elif f == "day_of_week":
            # Epoch day 0 was a Thursday; only the cycle matters to the network.
            angle = 2 * np.pi * (batch.open_time_ms % WEEK_MS) / WEEK_MS
            cols.extend([np.sin(angle), np.cos(angle)])
        else:
            raise ValueError(f"unknown feature {f!r}")
    return np.stack(cols, axis=-1).astype(np.float64)


def slot_of_day(open_time_ms: IntArray, interval_ms: int) -> IntArray:
    slots = max(1, DAY_MS // interval_ms)
    return ((open_time_ms % DAY_MS) // interval_ms).astype(np.int64) % slots


def slots_per_day(interval_ms: int) -> int:
    return max(1, DAY_MS // interval_ms)


def trailing_means(log_volume: FloatArray, positions: IntArray) -> FloatArray:
    """Last value and means over HAR_WINDOWS of the bars before each target position.

    ``log_volume`` is ``(symbols, bars)``; ``positions`` (each in 1..bars) index the bar to be
    predicted. With fewer bars than a window before a position, the mean is over those there are.
    Returns ``(symbols, positions, 1 + len(HAR_WINDOWS))``.
    """
    s, n = log_volume.shape
    out = np.empty((s, len(positions), 1 + len(HAR_WINDOWS)))
    out[:, :, 0] = log_volume[:, positions - 1]
    if len(positions) <= DIRECT_SUM_POSITIONS:
        # A live forecast has one position: a sum per window reads its bars in vectorised passes,
        # where a cumulative sum over the whole history is one sequential pass (1000 feeds x 1440
        # bars: 0.4 vs 4.5 ms). Equal up to float rounding; tests compare the two.
        for i, p in enumerate(positions.tolist()):
            for j, w in enumerate(HAR_WINDOWS, start=1):
                lo = max(p - w, 0)
                out[:, i, j] = log_volume[:, lo:p].sum(axis=1) / (p - lo)
        return out
    csum = np.zeros((s, n + 1))
    np.cumsum(log_volume, axis=1, out=csum[:, 1:])
    for j, w in enumerate(HAR_WINDOWS, start=1):
        start = np.maximum(positions - w, 0)
        out[:, :, j] = (csum[:, positions] - csum[:, start]) / (positions - start)
    return out


DIRECT_SUM_POSITIONS = 4
"""Up to this many target positions, ``trailing_means`` sums each window directly."""


# Windows (in bars) of the signed price moves the lstm reads as context at the target: where
# the price went over the last minutes says much about the next bar's volume (measured on the
# validation part of the training spans in docs/accuracy.md), and the direction matters too.
RETURN_WINDOWS: tuple[int, ...] = (5, 15, 60, 240)


def _signed_log_bp(x: FloatArray) -> FloatArray:
    """A log return as sign * log1p(|basis points|): spreads small moves, tames big ones."""
    return np.sign(x) * np.log1p(_BP * np.abs(x))


def signed_return(batch: Batch) -> FloatArray:
    """``(symbols, bars)``: each bar's close-to-close log return (0 for the first bar), signed log bp."""
    logc = np.log(np.maximum(batch.close, 1e-300))
    ret = np.zeros_like(logc)
    ret[:, 1:] = np.diff(logc, axis=1)
    return _signed_log_bp(ret)


def trailing_returns(close: FloatArray, positions: IntArray, windows: Sequence[int] = RETURN_WINDOWS) -> FloatArray:
    """Log return from ``w`` bars before the last one to the last one before each target position.

    ``close`` is ``(symbols, bars)``; with fewer than ``w`` earlier bars the move is from the first.
    Returns ``(symbols, positions, len(windows))`` in signed log basis points.
    """
    # Only the closes that are read, in one gather: a live batch is HAR_HISTORY bars long.
    back = np.asarray(windows, dtype=np.int64)
    rows = np.concatenate([positions[:, None] - 1, np.maximum(positions[:, None] - 1 - back[None, :], 0)], axis=1)
    logc = np.log(np.maximum(close[:, rows], 1e-300))  # (S, P, 1 + windows)
    out = logc[..., :1] - logc[..., 1:]
    return _signed_log_bp(out)


def minute_of_hour(open_time_ms: IntArray) -> IntArray:
    return ((open_time_ms % 3_600_000) // 60_000).astype(np.int64)
