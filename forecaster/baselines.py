"""Baselines scored beside every model, all forecasting log1p(volume) of the next bar.

Each is fitted only on the past it is given (the training part of a backtest, or the history a
worker passes when no model exists yet) and predicts at *target positions*: position ``p`` of a
``(symbols, bars)`` batch is predicted from rows ``< p``.

- ``naive``: the last bar's volume.
- ``ewma``: exponentially weighted mean of log volume (decay chosen on the training part).
- ``tod``: mean log volume at the same time of day over the past days.
- ``har``: least-squares regression of log volume on the last bar, trailing means (HAR_WINDOWS)
  and a per-symbol time-of-day profile learned on the training part.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from forecaster.features import (
    HAR_HISTORY,
    Batch,
    slot_of_day,
    slots_per_day,
    trailing_means,
)
from forecaster.frame import BarFrame, FloatArray, IntArray

BASELINE_NAMES: tuple[str, ...] = ("naive", "ewma", "tod", "har")


def target_open_times(batch: Batch, positions: IntArray) -> IntArray:
    """Open time of the bar at each target position (which may be one past the last row)."""
    return batch.open_time_ms[:, positions - 1] + batch.interval_ms


def fit_positions(n: int, warmup: int) -> IntArray:
    """Target positions to fit on in a frame of n bars: past a warm-up when there is room for it."""
    start = warmup if n > 2 * warmup else 1
    return np.arange(start, n, dtype=np.int64)


class LogForecaster:
    """What every model here does: fit on past frames, predict log1p volume at target positions."""

    name: ClassVar[str]
    look_back: int  # bars of history a live forecast is given

    @property
    def min_history(self) -> int:
        """Fewest bars before a position that still give a forecast (means over fewer bars)."""
        return 1

    def fit(self, frames: Sequence[tuple[str, BarFrame]]) -> None:
        raise NotImplementedError

    def predict_log(
        self, batch: Batch, keys: Sequence[str], positions: IntArray
    ) -> tuple[FloatArray, FloatArray | None]:
        """``(point (S, P), quantiles (S, P, Q) or None)`` in log1p space."""
        raise NotImplementedError

    @property
    def prepare_bars(self) -> int:
        """Bars per history that ``prepare_next`` reads; 0: it has nothing to compute ahead."""
        return 0

    def prepare_next(self, batch: Batch, keys: Sequence[str]) -> None:
        """Between boundaries: what the forecast of the bar after ``batch`` can compute ahead from
        the bars at hand (the lstm's state over the next window's older bars); nothing here."""
        return None

    def prepared_counts(self) -> tuple[int, int]:
        """Live forecasts so far (forecasts from a prepared state, forecasts of whole windows)."""
        return (0, 0)

    @property
    def quantile_levels(self) -> tuple[float, ...]:
        return ()


class Naive(LogForecaster):
    name = "naive"

    def __init__(self) -> None:
        self.look_back = 1

    def fit(self, frames: Sequence[tuple[str, BarFrame]]) -> None:
        return None

    def predict_log(
        self, batch: Batch, keys: Sequence[str], positions: IntArray
    ) -> tuple[FloatArray, FloatArray | None]:
        return batch.log_volume[:, positions - 1], None


class Ewma(LogForecaster):
    name = "ewma"
    ALPHAS: ClassVar[tuple[float, ...]] = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7)
    SPAN: ClassVar[int] = 240

    def __init__(self, alpha: float = 0.2) -> None:
        self.alpha = alpha
        self.look_back = self.SPAN

    def _weights(self, alpha: float) -> FloatArray:
        return alpha * (1 - alpha) ** np.arange(self.SPAN, dtype=np.float64)

    def _apply(self, lv: FloatArray, positions: IntArray, alpha: float) -> FloatArray:
        w = self._weights(alpha)
        out = np.empty((lv.shape[0], len(positions)))
        for lo in range(0, len(positions), 8192):
            p = positions[lo : lo + 8192]
            idx = p[:, None] - 1 - np.arange(self.SPAN)[None, :]
            valid = idx >= 0
            vals = lv[:, np.maximum(idx, 0)]  # (S, P, SPAN)
            wm = np.where(valid, w[None, :], 0.0)
            out[:, lo : lo + 8192] = (vals * wm[None]).sum(axis=2) / wm.sum(axis=1)[None]
        return out

    def fit(self, frames: Sequence[tuple[str, BarFrame]]) -> None:
        best: tuple[float, float] | None = None
        for alpha in self.ALPHAS:
            err = 0.0
            for _, frame in frames:
                batch = Batch.stack([frame])
                pos = fit_positions(len(frame), self.SPAN)
                if len(pos) == 0:
                    continue
                pred = self._apply(batch.log_volume, pos, alpha)
                err += float(((pred - batch.log_volume[:, pos]) ** 2).sum())
            if best is None or err < best[0]:
                best = (err, alpha)
        if best is not None:
            self.alpha = best[1]

    def predict_log(
        self, batch: Batch, keys: Sequence[str], positions: IntArray
    ) -> tuple[FloatArray, FloatArray | None]:
        return self._apply(batch.log_volume, positions, self.alpha), None


class TimeOfDay(LogForecaster):
    """Mean log volume at the same slot of the day over the past ``days`` days present."""

    name = "tod"

    def __init__(self, interval_ms: int = 60_000, days: int = 7) -> None:
        self.days = days
        self.interval_ms = interval_ms
        self.look_back = days * slots_per_day(interval_ms)

    def fit(self, frames: Sequence[tuple[str, BarFrame]]) -> None:
        if frames:
            self.interval_ms = frames[0][1].interval_ms
            self.look_back = self.days * slots_per_day(self.interval_ms)

    def predict_log(
        self, batch: Batch, keys: Sequence[str], positions: IntArray
    ) -> tuple[FloatArray, FloatArray | None]:
        lv = batch.log_volume
        spd = slots_per_day(batch.interval_ms)
        total = np.zeros((lv.shape[0], len(positions)))
        count = np.zeros(len(positions))
        for k in range(1, self.days + 1):
            idx = positions - k * spd
            ok = idx >= 0
            total += np.where(ok[None, :], lv[:, np.maximum(idx, 0)], 0.0)
            count += ok
        last = lv[:, positions - 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = total / count[None, :]
        return np.where(count[None, :] > 0, mean, last), None


@dataclass
class Har(LogForecaster):
    """HAR-style regression on log volume with a learned time-of-day profile per symbol."""

    name: ClassVar[str] = "har"
    coef: FloatArray = field(default_factory=lambda: np.zeros(0))
    interval_ms: int = 60_000
    profiles: dict[str, FloatArray] = field(default_factory=dict)
    global_profile: FloatArray = field(default_factory=lambda: np.zeros(0))
    look_back: int = HAR_HISTORY
    # profile_at's table: (the profiles dict it was built from, stacked rows, key -> row). fit
    # assigns a new dict, which makes a table built from the old one stale.
    _table: tuple[dict[str, FloatArray], FloatArray, dict[str, int]] | None = field(
        default=None, init=False, repr=False, compare=False)

    @property
    def fitted(self) -> bool:
        return len(self.coef) > 0

    def profile_for(self, key: str) -> FloatArray:
        return self.profiles.get(key, self.global_profile)

    def profile_at(self, keys: Sequence[str], slots: IntArray) -> FloatArray:
        """``(S, N)``: the profile of each of the S keys at its N ``slots`` (one gather, where
        indexing key by key cost about 1 ms per 1000 feeds at every boundary)."""
        if self._table is None or self._table[0] is not self.profiles:
            # Row 0 is the global profile, for keys without one of their own.
            stacked = np.stack([self.global_profile, *self.profiles.values()])
            self._table = (self.profiles, stacked, {k: i for i, k in enumerate(self.profiles, start=1)})
        _, table, rows = self._table
        index = np.fromiter((rows.get(k, 0) for k in keys), dtype=np.intp, count=len(keys))
        out: FloatArray = table[index[:, None], slots]
        return out

    def design(self, batch: Batch, keys: Sequence[str], positions: IntArray) -> FloatArray:
        """``(S, P, 1 + regressors)``: intercept, last, trailing means, time-of-day profile."""
        means = trailing_means(batch.log_volume, positions)
        slots = slot_of_day(target_open_times(batch, positions), batch.interval_ms)
        tod = self.profile_at(keys, slots)
        ones = np.ones((*means.shape[:2], 1))
        return np.concatenate([ones, means, tod[..., None]], axis=2)

    def fit(self, frames: Sequence[tuple[str, BarFrame]]) -> None:
        if not frames:
            raise ValueError("HAR needs at least one frame to fit on")
        self.interval_ms = frames[0][1].interval_ms
        spd = slots_per_day(self.interval_ms)
        self.profiles = {}
        for key, frame in frames:
            lv = np.log1p(np.maximum(frame.volume, 0.0))
            slots = slot_of_day(frame.open_time_ms, frame.interval_ms)
            sums = np.bincount(slots, weights=lv - lv.mean(), minlength=spd)
            counts = np.bincount(slots, minlength=spd)
            with np.errstate(invalid="ignore", divide="ignore"):
                self.profiles[key] = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
        self.global_profile = np.mean(np.stack(list(self.profiles.values())), axis=0)
        xs: list[FloatArray] = []
        ys: list[FloatArray] = []
        for key, frame in frames:
            pos = fit_positions(len(frame), HAR_HISTORY)
            if len(pos) == 0:
                continue
            xs.append(self.fitted_design(key, frame, pos))
            ys.append(np.log1p(np.maximum(frame.volume[pos], 0.0)))
        if not xs:
            raise ValueError("HAR needs at least two bars to fit on")
        x: FloatArray = np.concatenate(xs)
        y: FloatArray = np.concatenate(ys)
        # A tiny ridge keeps the solve stable when the means are nearly collinear.
        gram = x.T @ x + 1e-6 * np.eye(x.shape[1]) * len(x)
        gram[0, 0] -= 1e-6 * len(x)
        self.coef = np.asarray(np.linalg.solve(gram, x.T @ y), dtype=np.float64)

    def fitted_design(self, key: str, frame: BarFrame, positions: IntArray) -> FloatArray:
        """``design`` at positions of a frame this HAR was fitted on, honest about the profile.

        The profile was computed from these very bars: each target is left out of its own slot's
        mean, or a fit on these rows credits the profile with the noise it memorised (HAR's own
        fit, and the LSTM and ensemble trained on HAR's regressors, all use this).
        """
        batch = Batch.stack([frame])
        x: FloatArray = self.design(batch, [key], positions)[0]
        lv = batch.log_volume[0]
        all_slots = slot_of_day(frame.open_time_ms, frame.interval_ms)
        counts = np.bincount(all_slots, minlength=slots_per_day(frame.interval_ms))[all_slots[positions]]
        dev = lv[positions] - lv.mean()
        with np.errstate(invalid="ignore", divide="ignore"):
            loo = (x[:, -1] * counts - dev) / (counts - 1)
        x[:, -1] = np.where(counts > 1, loo, 0.0)
        return x

    def predict_log(
        self, batch: Batch, keys: Sequence[str], positions: IntArray
    ) -> tuple[FloatArray, FloatArray | None]:
        if not self.fitted:
            raise ValueError("HAR is not fitted")
        return self.design(batch, keys, positions) @ self.coef, None

    def state(self) -> tuple[dict[str, npt.NDArray[Any]], dict[str, Any]]:
        """Tensors and JSON-able metadata that rebuild this HAR (for artifacts)."""
        keys = sorted(self.profiles)
        tensors: dict[str, npt.NDArray[Any]] = {
            "har.coef": self.coef.astype(np.float64),
            "har.global_profile": self.global_profile.astype(np.float64),
        }
        if keys:
            tensors["har.profiles"] = np.stack([self.profiles[k] for k in keys]).astype(np.float64)
        return tensors, {"interval_ms": self.interval_ms, "profile_keys": keys}

    @classmethod
    def from_state(cls, tensors: dict[str, npt.NDArray[Any]], meta: dict[str, Any]) -> Har:
        keys: list[str] = list(meta["profile_keys"])
        profiles = tensors.get("har.profiles")
        return cls(
            coef=np.asarray(tensors["har.coef"], dtype=np.float64),
            interval_ms=int(meta["interval_ms"]),
            profiles={k: np.asarray(profiles[i], dtype=np.float64) for i, k in enumerate(keys)}
            if profiles is not None
            else {},
            global_profile=np.asarray(tensors["har.global_profile"], dtype=np.float64),
        )


def make_baseline(name: str, interval_ms: int = 60_000) -> LogForecaster:
    if name == "naive":
        return Naive()
    if name == "ewma":
        return Ewma()
    if name == "tod":
        return TimeOfDay(interval_ms)
    if name == "har":
        return Har(interval_ms=interval_ms)
    raise ValueError(f"unknown baseline {name!r}: choose one of {', '.join(BASELINE_NAMES)}")
