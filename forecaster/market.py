"""Market-wide inputs: what the other feeds' volumes did, computed across the feeds of a boundary.

Volume moves together across symbols (the intraday-volume literature's "commonality"): when the
whole market trades above its usual level, so, usually, does the next bar of each symbol. A live
worker sees every feed at each boundary and can use that at once.

One function, ``aggregate``, computes the inputs from per-feed statistics (``feed_stats``), so that
training and backtests over several bar files (``attach``) and the live worker
(``live_inputs``, over the bar matrix of every feed) compute them the same way:

- each feed's log volume relative to its own level (the mean over the last ``HAR_HISTORY`` bars,
  a day of 1-minute bars): of the last bar, of the means over the last 5, 15 and 60 bars, and of
  the bar at the target's time of day one day earlier (the market's time-of-day profile, from
  the one day of bars a live worker holds); clipped to +-``FEED_CLIP`` so one absurd feed cannot
  move the aggregate far;
- ``market_volume``: the mean of those over every OTHER feed that has them (a day of bars ending
  with the last bar before the target); ``exchange_volume``: the same over the other feeds of the
  symbol's exchange; ``market_share``: the symbol's own last bar and 60-bar mean minus its
  exchange's (the log ratio of its relative volume to its exchange's).

Leaving the feed itself out is what makes a single feed fall back cleanly: with no other feed
every input is 0, constant, and training drops it (lstm_inputs.MIN_SPREAD). The inputs of a target
use only bars that closed before it opens (no lookahead); a feed without its bar there is left out.

Volumes in base units cannot be summed across symbols (a LINK is not an ALGO), so the market's
level is a mean of log volumes relative to each feed's own level, not a total.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from forecaster.bar_matrix import BarMatrix
from forecaster.features import HAR_HISTORY, MarketInputs, trailing_means
from forecaster.frame import BarFrame, FloatArray, IntArray
from volcast.keys import Feed
from volcast.settings import Feature

MARKET_FEATURES: tuple[Feature, ...] = ("market_volume", "exchange_volume", "market_share")
STATS: tuple[str, ...] = ("last", "mean_5", "mean_15", "mean_60", "day_ago")
"""Per-feed statistics, each relative to the feed's own level over HAR_HISTORY bars."""
_MEANS = (0, 1, 2, 3)  # the trailing_means columns last, mean_5, mean_15, mean_60
_LEVEL = 5  # trailing_means' mean over HAR_HISTORY bars (the feed's level)
SHARE: tuple[str, ...] = ("last", "mean_60")
FEED_CLIP = 8.0
"""A feed's relative log volume is clipped to +-this (e^8 = 3000x its level) before it joins the
aggregate: a feed with absurd bars moves the market inputs by at most this over the feed count."""


def input_names(features: Sequence[str]) -> tuple[str, ...]:
    """Names of the static inputs the configured market features add, in order."""
    out: list[str] = []
    if "market_volume" in features:
        out += [f"market_{s}" for s in STATS]
    if "exchange_volume" in features:
        out += [f"exchange_{s}" for s in STATS]
    if "market_share" in features:
        out += [f"share_{s}" for s in SHARE]
    return tuple(out)


def feed_stats(log_volume: FloatArray, positions: IntArray) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Each feed's STATS for a target at each position, and whether it has them.

    ``log_volume`` is ``(feeds, bars)``; a feed has the statistics of position ``p`` when it holds
    the HAR_HISTORY bars before it (``p >= HAR_HISTORY``) and they are finite. Returns
    ``(feeds, positions, len(STATS))`` (0 where missing) and ``(feeds, positions)``.
    """
    s = log_volume.shape[0]
    ok = positions >= HAR_HISTORY
    out = np.zeros((s, len(positions), len(STATS)))
    if not ok.any():
        return out, np.zeros((s, len(positions)), dtype=bool)
    pos = positions[ok]
    means = trailing_means(log_volume, pos)  # (S, P, 1 + HAR windows)
    level = means[:, :, _LEVEL : _LEVEL + 1]
    stats = np.empty((s, len(pos), len(STATS)))
    stats[:, :, : len(_MEANS)] = means[:, :, list(_MEANS)] - level
    # The bar one day before the target: the same time of day (positions >= HAR_HISTORY).
    stats[:, :, len(_MEANS)] = log_volume[:, pos - HAR_HISTORY] - level[:, :, 0]
    good = np.asarray(np.isfinite(stats).all(axis=-1), dtype=bool)
    out[:, ok] = np.where(good[..., None], np.clip(stats, -FEED_CLIP, FEED_CLIP), 0.0)
    present = np.zeros((s, len(positions)), dtype=bool)
    present[:, ok] = good
    return out, present


def aggregate(stats: FloatArray, present: npt.NDArray[np.bool_], exchange: IntArray,
              features: Sequence[str]) -> FloatArray:
    """The market inputs of every feed: ``(feeds, targets, len(input_names(features)))``.

    ``stats``/``present`` from ``feed_stats`` (feeds aligned on the same targets); ``exchange``
    an integer code per feed. Each feed's market and exchange inputs are the means over the
    other feeds present (0 with none); vectorised over feeds and targets.
    """
    x = np.where(present[..., None], stats, 0.0)
    own = present.astype(np.float64)[..., None]

    def leave_one_out(rows: npt.NDArray[np.bool_] | slice) -> tuple[FloatArray, FloatArray]:
        """Mean of the other present feeds among ``rows`` (0 with none), and their count."""
        n = own[rows].sum(axis=0)[None] - own[rows]
        total = x[rows].sum(axis=0)[None] - x[rows]
        return np.where(n > 0, total / np.maximum(n, 1.0), 0.0), n

    parts: list[FloatArray] = []
    if "market_volume" in features:
        parts.append(leave_one_out(slice(None))[0])
    if "exchange_volume" in features or "market_share" in features:
        ex = np.zeros_like(x)
        ex_n = np.zeros_like(own)
        for code in np.unique(exchange).tolist():
            rows = exchange == code
            ex[rows], ex_n[rows] = leave_one_out(rows)
        if "exchange_volume" in features:
            parts.append(ex)
        if "market_share" in features:
            pick = [STATS.index(s) for s in SHARE]
            # Only a feed with its own statistics and another feed of its exchange has a share.
            parts.append(np.where(present[..., None] & (ex_n > 0), x[..., pick] - ex[..., pick], 0.0))
    if not parts:
        return np.zeros((*present.shape, 0))
    return np.concatenate(parts, axis=-1)


def exchange_of_key(key: str) -> str:
    """The exchange part of a feed key (``binance-usdm_FILUSDT`` or ``binance-usdm:FILUSDT:60000``)."""
    for sep in (":", "_"):
        if sep in key:
            return key.split(sep, 1)[0]
    return key


@dataclass(frozen=True, slots=True)
class Coverage:
    """How much market context a frame got: which a backtest reports."""

    targets: int  # target positions with a day of the frame's own bars before them
    with_others: int  # of those, how many had at least one other feed's statistics
    mean_others: float  # other feeds present per such target, on average

    def as_dict(self) -> dict[str, float]:
        return {"targets": float(self.targets), "with_others": float(self.with_others),
                "mean_others": self.mean_others}


def attach(frames: Sequence[tuple[str, BarFrame]], features: Sequence[str],
           exchanges: Mapping[str, str] | None = None) -> tuple[list[tuple[str, BarFrame]], dict[str, Coverage]]:
    """Frames (several feeds' bar files) with their market inputs, aligned on bar open time.

    Every target time of every frame gets the aggregate over whichever OTHER frames hold the day
    of bars before it (files that overlap only in part get market inputs where they overlap, 0
    elsewhere). Call it on whole files before splitting them: a slice keeps its rows.
    ``exchanges``: key -> exchange (default: the key's prefix, ``exchange_of_key``).
    """
    if not frames:
        return [], {}
    interval = frames[0][1].interval_ms
    if any(f.interval_ms != interval for _, f in frames):
        raise ValueError("market inputs need frames of one bar interval")
    # Target times: position p of a frame targets open_time[0] + p * interval, p = 0..len.
    first = min(int(f.open_time_ms[0]) for _, f in frames)
    last = max(int(f.open_time_ms[0]) + len(f) * interval for _, f in frames)
    grid = (last - first) // interval + 1
    codes = {name: i for i, name in enumerate(sorted({(exchanges or {}).get(k) or exchange_of_key(k)
                                                        for k, _ in frames}))}
    exchange = np.array([codes[(exchanges or {}).get(k) or exchange_of_key(k)] for k, _ in frames], dtype=np.int64)
    stats = np.zeros((len(frames), grid, len(STATS)))
    present = np.zeros((len(frames), grid), dtype=bool)
    offsets = []
    for i, (_, frame) in enumerate(frames):
        positions = np.arange(len(frame) + 1, dtype=np.int64)
        lv = np.log1p(np.maximum(frame.volume, 0.0))[None]
        st, ok = feed_stats(lv, positions)
        off = (int(frame.open_time_ms[0]) - first) // interval
        offsets.append(off)
        stats[i, off : off + len(positions)] = st[0]
        present[i, off : off + len(positions)] = ok[0]
    values = aggregate(stats, present, exchange, features)
    out, coverage = [], {}
    for i, (key, frame) in enumerate(frames):
        rows = slice(offsets[i], offsets[i] + len(frame) + 1)
        out.append((key, replace(frame, market=values[i, rows].copy())))
        own = present[i, rows]
        n_others = present[:, rows].sum(axis=0) - own
        with_others = own & (n_others > 0)
        coverage[key] = Coverage(int(own.sum()), int(with_others.sum()),
                                 float(n_others[with_others].mean()) if with_others.any() else 0.0)
    return out, coverage


def live_inputs(log_volume: FloatArray, exchange: IntArray, features: Sequence[str]) -> FloatArray:
    """The market inputs for the bar after each history: ``(feeds, len(input_names(features)))``.

    ``log_volume`` is ``(feeds, HAR_HISTORY)``: the day of bars of every feed the worker holds that
    ends with the boundary's bar (feeds without it are not passed: they are left out).
    """
    positions = np.array([log_volume.shape[1]], dtype=np.int64)
    stats, present = feed_stats(log_volume, positions)
    return aggregate(stats, present, exchange, features)[:, 0]


def features_read_by(predictor: object) -> tuple[str, ...]:
    """The market features a serving predictor's model reads (none for baselines and seed)."""
    model = getattr(predictor, "model", None)
    model = getattr(model, "lstm", model)  # an ensemble's lstm
    return tuple(f for f in getattr(model, "features", ()) if f in MARKET_FEATURES)


@dataclass(frozen=True, slots=True)
class BoundaryMarket:
    """The market inputs of one boundary, for every feed of the aggregate (live)."""

    open_ms: int
    rows: dict[Feed, int]  # feed -> row of values
    values: FloatArray  # (feeds, inputs)

    def inputs(self, feeds: Sequence[Feed], bars: int) -> MarketInputs:
        """The inputs of the bar after a batch of ``bars`` bars of ``feeds``. A feed left out of
        the aggregate (not in the main matrix with a day of bars ending at the boundary: far
        behind, held apart, just started) gets zeros: the single-feed fallback, never a value
        made from a stale window."""
        out = np.zeros((len(feeds), 1, self.values.shape[1]))
        if self.rows:
            index = np.fromiter((self.rows.get(f, -1) for f in feeds), dtype=np.intp, count=len(feeds))
            known = index >= 0
            out[known, 0] = self.values[index[known]]
        return MarketInputs(bars, out)


def at_boundary(matrix: BarMatrix, open_ms: int, features: Sequence[str]) -> BoundaryMarket:
    """The live aggregate at bar ``open_ms``: over every feed of ``matrix`` whose newest bar is
    ``open_ms`` and that holds the day of bars before it (the same ``feed_stats`` as training).
    One vectorised reduction over the feed axis of the matrix's log volume plane."""
    width = len(input_names(features))
    feeds = [f for f in matrix.ending_at(open_ms) if matrix.available(f, open_ms) >= HAR_HISTORY]
    if not feeds or not width:
        return BoundaryMarket(open_ms, {}, np.zeros((0, width)))
    ordered, batch = matrix.batch(feeds, open_ms, HAR_HISTORY)
    names: dict[str, int] = {}
    exchange = np.fromiter((names.setdefault(f.exchange, len(names)) for f in ordered), dtype=np.int64,
                           count=len(ordered))
    values = live_inputs(batch.log_volume, exchange, features)
    return BoundaryMarket(open_ms, {f: i for i, f in enumerate(ordered)}, values)


def attach_configured(frames: Sequence[tuple[str, BarFrame]], features: Sequence[str]
                      ) -> tuple[list[tuple[str, BarFrame]], dict[str, Coverage] | None]:
    """``attach`` when ``features`` names a market feature; otherwise the frames unchanged, None."""
    if not any(f in MARKET_FEATURES for f in features):
        return list(frames), None
    return attach(frames, features)


def describe(coverage: Mapping[str, Coverage]) -> list[str]:
    """One line per frame: how many other files its market inputs came from (for the CLI)."""
    return [f"market inputs for {key}: " + (
        f"from {got.mean_others:.1f} other file(s) on average, on {got.with_others} of {got.targets} bars"
        if got.with_others else "no other file at the same times: they are 0 and dropped (single-feed fallback)")
        for key, got in coverage.items()]
