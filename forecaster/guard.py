"""The output guard: no forecast leaves the worker unless it is a volume this feed could have.

A forecast passes when its point value and every quantile are finite, not negative, and at most
``bound = GUARD_FACTOR * (1 + M) - 1`` where ``M`` is the largest finite volume among the last
``GUARD_BARS`` bars of the window it was made from (the bars the predictor was given: a day of
1-minute bars for the lstm and HAR); the quantiles must also be in order. In log1p space, which
is where every model here works: ``log1p(forecast) <= log1p(M) + log(GUARD_FACTOR)``. A feed
whose window holds no volume at all (a day of empty bars) may still be forecast up to
``GUARD_FACTOR - 1``.

Why these numbers: a next-bar forecast ten times above the busiest bar of the last day is not a
forecast, whatever the asset (the bound is in the feed's own units, so it needs no per-asset
setting), and ten times leaves room for quantiles of a quiet feed. The refit worker checks a
challenger's holdout forecasts against the same bound (``rolling_bounds``), so a model that would
be guarded live is never promoted.

A multi-horizon forecast (forecaster/horizons.py) is checked the same way at every target: each
coming bar against the same bound, each cumulative window of k bars against ``log(k)`` above it
(k bars each within the bound), every quantile in order. A forecast any of whose published
numbers fails is replaced whole, its reason prefixed ``horizon_`` when only a horizon failed.

A failing forecast is replaced by the naive forecast on the same window (its last bar's volume,
0 when that is not a volume) in ``ModelPredictor``, marked with the reason; the worker then tries
the feed's fallback baseline (``replace``). Everything here is vectorised over a batch: the
guard of 1000 feeds costs about half a millisecond (docs/forecaster.md). The live check works in
log1p space, on the log volumes the worker stores with each bar (the HAR means have just read
them, so they are in cache): the volume plane of 1000 day-long windows is 11.5 MB of memory that
nothing else reads at a boundary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from forecaster.features import HAR_HISTORY
from forecaster.frame import FloatArray, IntArray

GUARD_FACTOR = 10.0
"""How far above the window's largest volume a forecast may go (in 1 + volume)."""
GUARD_BARS = HAR_HISTORY
"""The newest bars of a window whose largest volume sets the bound: a day of 1-minute bars."""
MAX_LOG = 700.0
"""Log1p forecasts are clamped here before ``expm1`` (which overflows past about 709.78): the
value is then finite, and the guard calls it what it is, above the bound."""

NOT_FINITE = "not_finite"
NEGATIVE = "negative"
ABOVE_BOUND = "above_bound"
QUANTILE_NOT_FINITE = "quantile_not_finite"
QUANTILE_OUT_OF_RANGE = "quantile_out_of_range"
QUANTILES_OUT_OF_ORDER = "quantiles_out_of_order"
REASONS: tuple[str, ...] = (NOT_FINITE, NEGATIVE, ABOVE_BOUND, QUANTILE_NOT_FINITE, QUANTILE_OUT_OF_RANGE,
                            QUANTILES_OUT_OF_ORDER)
HORIZON = "horizon_"
"""Prefix of a reason found at a horizon or cumulative window rather than at the next bar."""
BoolArray = npt.NDArray[np.bool_]


def _finite_max(window: FloatArray) -> FloatArray:
    """Each row's largest finite value of its newest GUARD_BARS (0 when there is none or it is
    negative)."""
    recent = window[:, -GUARD_BARS:] if window.shape[1] > GUARD_BARS else window
    if recent.shape[1] == 0:
        return np.zeros(recent.shape[0])
    # A plain max first (about 0.1 ms per 256 day-long rows); the rare row holding NaN or inf
    # (a bad bar) is taken again without them.
    top = recent.max(axis=1)
    odd = ~np.isfinite(top)
    if odd.any():
        rows = recent[odd]
        top[odd] = np.where(np.isfinite(rows), rows, 0.0).max(axis=1)
    out: FloatArray = np.maximum(top, 0.0)
    return out


def bounds(window: FloatArray, factor: float = GUARD_FACTOR) -> FloatArray:
    """The upper bound of each row's forecast, from its volumes ``window`` ``(N, bars)`` (the
    newest GUARD_BARS are read). Values that are not finite are ignored."""
    out: FloatArray = factor * (1.0 + _finite_max(window)) - 1.0
    return out


def log_bounds(log_window: FloatArray, factor: float = GUARD_FACTOR) -> FloatArray:
    """``log1p(bounds)`` from the log1p volumes ``log_window`` ``(N, bars)`` (the same rule)."""
    out: FloatArray = _finite_max(log_window) + math.log(factor)
    return out


def passing_log(point: FloatArray, quantiles: FloatArray | None, log_bound: FloatArray) -> BoolArray:
    """``passing`` on log1p forecasts (a log1p value below 0 is a volume of 0, which passes)."""
    ok: BoolArray = point <= log_bound
    if quantiles is not None and quantiles.shape[1]:
        ok &= (quantiles <= log_bound[:, None]).all(axis=1)
        if quantiles.shape[1] > 1:
            ok &= (quantiles[:, 1:] >= quantiles[:, :-1]).all(axis=1)
    return ok


def target_log_bounds(log_bound: FloatArray, bars: Sequence[int]) -> FloatArray:
    """``(N, T)``: the log1p bound of each target, a window of ``bars[j]`` coming bars."""
    out: FloatArray = log_bound[:, None] + np.log(np.asarray(bars, dtype=np.float64))[None, :]
    return out


def passing_targets_log(point: FloatArray, quantiles: FloatArray | None, bound: FloatArray) -> BoolArray:
    """``passing_log`` at every target: ``point`` and ``bound`` (N, T), ``quantiles`` (N, T, Q)."""
    ok: BoolArray = np.asarray((point <= bound).all(axis=1))
    if quantiles is not None and quantiles.shape[-1]:
        ok &= (quantiles <= bound[..., None]).all(axis=(1, 2))
        if quantiles.shape[-1] > 1:
            ok &= (quantiles[..., 1:] >= quantiles[..., :-1]).all(axis=(1, 2))
    return ok


def target_reason_log(point: Sequence[float], quantiles: Sequence[Sequence[float]] | None,
                      bound: Sequence[float]) -> str:
    """Why a row failing ``passing_targets_log`` fails: its first failing target's reason."""
    for j, (p, b) in enumerate(zip(point, bound, strict=True)):
        qs = [] if quantiles is None else list(quantiles[j])
        if not passing_log(np.array([p]), np.array([qs]) if qs else None, np.array([b]))[0]:
            return HORIZON + reason_log(p, qs, b)
    return HORIZON + QUANTILES_OUT_OF_ORDER


def rolling_bounds(volume: FloatArray, positions: IntArray, factor: float = GUARD_FACTOR) -> FloatArray:
    """``bounds`` of the forecast at each target position of one series: from the GUARD_BARS bars
    before it (fewer at the start), as the live worker holds them."""
    clean = np.where(np.isfinite(volume), np.maximum(volume, 0.0), 0.0)
    padded = np.concatenate([np.zeros(GUARD_BARS - 1), clean])
    # windows[i] holds volume[i - GUARD_BARS + 1 : i + 1]; a target p reads the bars before it.
    windows = sliding_window_view(padded, GUARD_BARS)
    top = windows[np.asarray(positions) - 1].max(axis=1)
    out: FloatArray = factor * (1.0 + top) - 1.0
    return out


def passing(point: FloatArray, quantiles: FloatArray | None, bound: FloatArray) -> BoolArray:
    """``(N,)`` True where the forecast passes. Two comparisons per value: NaN and inf fail both
    or one of them, so finiteness needs no test of its own."""
    ok: BoolArray = (point >= 0.0) & (point <= bound)
    if quantiles is not None and quantiles.shape[1]:
        ok &= ((quantiles >= 0.0) & (quantiles <= bound[:, None])).all(axis=1)
        if quantiles.shape[1] > 1:
            ok &= (quantiles[:, 1:] >= quantiles[:, :-1]).all(axis=1)
    return ok


def reason_log(point: float, quantiles: Sequence[float], log_bound: float) -> str:
    """Why a log1p forecast fails ``passing_log`` (its first broken rule, in ``REASONS`` order)."""
    if math.isnan(point) or point == math.inf:
        return NOT_FINITE
    if point > log_bound:
        return ABOVE_BOUND
    if any(math.isnan(q) or q == math.inf for q in quantiles):
        return QUANTILE_NOT_FINITE
    if any(q > log_bound for q in quantiles):
        return QUANTILE_OUT_OF_RANGE
    return QUANTILES_OUT_OF_ORDER  # the only rule left that passing_log checks


def naive_volumes(window: FloatArray) -> FloatArray:
    """The naive forecast of each row (its newest bar's volume), 0 where that is not a volume."""
    last = window[:, -1]
    return np.where(np.isfinite(last) & (last > 0.0), last, 0.0)


def clean_volume(value: float) -> float:
    """A bar's volume as a payload may carry it: one that is not finite or is negative cannot be
    a volume (the streamer keeps such trades out of bars) and counts as none."""
    return value if value > 0.0 and value != math.inf else 0.0


@dataclass
class GuardCounts:
    """Forecasts the guard replaced, in total and per feed, for the forecaster's status hash."""

    total: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    feeds: dict[str, int] = field(default_factory=dict)
    last_reason: str = ""
    last_feed: str = ""
    last_ms: int = 0

    def add(self, feed: str, why: str, at_ms: int) -> int:
        """Count one replaced forecast of ``feed``; returns how many that feed has had."""
        self.total += 1
        self.by_reason[why] = self.by_reason.get(why, 0) + 1
        count = self.feeds[feed] = self.feeds.get(feed, 0) + 1
        self.last_reason, self.last_feed, self.last_ms = why, feed, at_ms
        return count

    def status(self) -> dict[str, str]:
        """Fields of the forecaster status hash (``guarded_<reason>`` for each reason seen)."""
        return {
            "guarded": str(self.total),
            "guarded_feeds": str(len(self.feeds)),
            "last_guard_reason": self.last_reason,
            "last_guard_feed": self.last_feed,
            "last_guard_ms": str(self.last_ms) if self.last_ms else "",
            **{f"guarded_{name}": str(n) for name, n in sorted(self.by_reason.items())},
        }
