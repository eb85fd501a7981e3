"""What a multi-horizon forecast covers: its *targets*, each a window of coming bars.

A model with horizons forecasts, in one forward pass, ``log1p`` of the volume of each of the
next ``H`` bars (targets ``(h, 1)`` for h = 0..H-1, offsets from the first coming bar) and of
the cumulative volume over each configured sum (targets ``(0, k)``: the next ``k`` bars). Target 0
is always the next bar, so a model's next-bar forecast is its first target whatever the horizons.

The cumulative windows have heads of their own (trained on log1p of the window's summed volume)
rather than being a sum of the per-bar forecasts: those are forecasts of the conditional mean of
log volume, whose exponentials sum to less than the expected total (Jensen), and a sum of per-bar
quantiles is not a quantile of the sum. ``benchmarks/accuracy.py --horizons`` measures both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from forecaster.frame import FloatArray, IntArray
from volcast.durations import format_duration_ms
from volcast.settings import ModelSettings

HOUR_MS = 3_600_000
MAX_DEFAULT_HORIZONS = 120
"""The default horizons (the next hour) at most: an hour of 1-second bars would be 3600 heads and
a 100 kB payload per feed. Set ``model.horizons`` to go further."""
DEFAULT_SUMS_MS: tuple[int, ...] = (5 * 60_000, 15 * 60_000, HOUR_MS)

Target = tuple[int, int]  # (offset of the window's first bar from the next bar, bars in it)
NEXT_BAR: tuple[Target, ...] = ((0, 1),)


@dataclass(frozen=True, slots=True)
class Horizons:
    """The targets of a model: ``bars`` single coming bars, then ``sums`` (label, bars) windows."""

    bars: int
    sums: tuple[tuple[str, int], ...]

    @property
    def targets(self) -> tuple[Target, ...]:
        return (*((h, 1) for h in range(self.bars)), *((0, k) for _, k in self.sums))

    @property
    def span(self) -> int:
        """Bars after a forecast's position that its farthest target reads."""
        return max(o + k for o, k in self.targets)

    @property
    def multi(self) -> bool:
        """More than the next bar alone (a payload then carries ``horizons``)."""
        return len(self.targets) > 1

    @classmethod
    def of_targets(cls, targets: list[list[int]] | tuple[Target, ...], labels: list[str]) -> Horizons:
        """From an artifact's record: the single bars first, then the sums (in ``labels``' order)."""
        singles = [t for t in targets if int(t[1]) == 1]
        sums = [int(t[1]) for t in targets if int(t[1]) != 1]
        if [tuple(t) for t in singles] != [(h, 1) for h in range(len(singles))] or len(sums) != len(labels):
            raise ValueError(f"targets {targets} are not next bars followed by sums {labels}")
        return cls(len(singles), tuple(zip(labels, sums, strict=True)))


def resolve(model: ModelSettings, interval_ms: int) -> Horizons:
    """The targets ``model`` asks for at bars of ``interval_ms``; the seed model has the next bar only."""
    if model.name == "seed":
        return Horizons(1, ())
    bars = model.horizons
    if bars is None:
        bars = max(1, min(MAX_DEFAULT_HORIZONS, HOUR_MS // interval_ms))
    if model.horizon_sums is None:
        sums_ms = [ms for ms in DEFAULT_SUMS_MS if ms % interval_ms == 0 and ms // interval_ms >= 2]
    else:
        odd = [format_duration_ms(ms) for ms in model.horizon_sums if ms % interval_ms]
        if odd:
            raise ValueError(f"model.horizon_sums {odd} are not whole multiples of the bar interval "
                             f"{format_duration_ms(interval_ms)}")
        sums_ms = list(model.horizon_sums)
    return Horizons(bars, tuple((format_duration_ms(ms), ms // interval_ms) for ms in sums_ms))


def slot_of_hour(open_time_ms: IntArray, interval_ms: int) -> IntArray:
    """Which bar of its hour each open time is (the minute of the hour at 1m)."""
    out: IntArray = (open_time_ms % HOUR_MS) // interval_ms
    return out


def window_sums(values: FloatArray, positions: IntArray, targets: tuple[Target, ...]) -> FloatArray:
    """``(P, T)``: the sum of ``values`` (one series) over each target's window from each position
    (positions are bar indices, >= 0).

    NaN where a window runs past the end of the series.
    """
    table, row, start = _window_table(values, positions, targets)
    out: FloatArray = table[row, start]
    return out


def log1p_window_sums(values: FloatArray, positions: IntArray, targets: tuple[Target, ...]) -> FloatArray:
    """``np.log1p(window_sums(...))``, the same numbers, with log1p taken once per window rather
    than once per position and target (a window is read by up to 60 targets of as many positions:
    the fallback HAR's refit took 1.7M logs at 100 feeds for 4 x 400 windows each)."""
    table, row, start = _window_table(values, positions, targets)
    out: FloatArray = np.log1p(table)[row, start]
    return out


def _window_table(values: FloatArray, positions: IntArray, targets: tuple[Target, ...]
                  ) -> tuple[FloatArray, IntArray, IntArray]:
    """The sum of every window of each length the targets use (a few: 1, 5, 15, 60 bars), NaN
    past the end, and where each position's targets read it: ``table[row, start]`` is
    ``(P, T)``.

    cum[s + k] - cum[s], as a loop over the 60+ targets with a masked assignment each computed
    it (the same numbers), which cost ~0.6 ms per feed (P = 270), twice per feed in every refit
    of the fallback HAR (forecaster/fallback.py) and once per feed in an LSTM's training inputs.
    """
    n = len(values)
    cum = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
    windows = np.array(targets, dtype=np.int64).reshape(len(targets), 2)  # (offset, bars) per target
    start = np.asarray(positions, dtype=np.int64)[:, None] + windows[None, :, 0]
    lengths, row = np.unique(windows[:, 1], return_inverse=True)
    size = max(n + 1, int(start.max()) + 1 if start.size else 0)
    table = np.full((len(lengths), size), np.nan)  # [row of length k, s]: bars s .. s + k - 1
    for i, k in enumerate(lengths.tolist()):
        if k <= n:
            table[i, : n - k + 1] = cum[k:] - cum[: n - k + 1]
    return table, row.reshape(1, -1), start
