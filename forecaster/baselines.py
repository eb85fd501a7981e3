"""Baselines scored beside every model, all forecasting log1p(volume) of the next bar.

Each is fitted only on the past it is given (the training part of a backtest, or the history a
worker passes when no model exists yet) and predicts at *target positions*: position ``p`` of a
``(symbols, bars)`` batch is predicted from rows ``< p``.

- ``naive``: the last bar's volume.
- ``ewma``: exponentially weighted mean of log volume (decay chosen on the training part).
- ``tod``: mean log volume at the same time of day over the past days.
- ``har``: least-squares regression of log volume on the last bar, trailing means (HAR_WINDOWS)
  and a per-symbol time-of-day profile learned on the training part.

Multi-horizon (forecaster/horizons.py): ``predict_targets`` forecasts log1p of the volume summed
over each target window of coming bars. naive: the last bar's volume times the window's bars;
tod: the sum of the profile's volumes over the window's slots; HAR *direct*: one regression per
target on the same regressors, the profile term being the mean profile over the target's slots
(``Har(targets=...)``; its first target, the next bar, is the one-step HAR unchanged).
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
from forecaster.horizons import NEXT_BAR, Horizons, Target, log1p_window_sums, window_sums

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

    @property
    def targets(self) -> tuple[Target, ...]:
        """What ``predict_targets`` forecasts (forecaster/horizons.py); the next bar alone here."""
        return NEXT_BAR

    @property
    def horizon_spec(self) -> Horizons:
        """The targets with their names, for payloads: the next bar alone here."""
        return Horizons(1, ())

    def predict_targets(
        self, batch: Batch, keys: Sequence[str], positions: IntArray
    ) -> tuple[FloatArray, FloatArray | None]:
        """``(point (S, P, T), quantiles (S, P, T, Q) or None)``: log1p of each target's volume,
        from the same forward pass (``predict_log`` is its first target)."""
        point, quants = self.predict_log(batch, keys, positions)
        return point[..., None], None if quants is None else quants[..., None, :]


def _log_window_volume(log_bar: FloatArray, targets: Sequence[Target]) -> FloatArray:
    """``(..., T)`` log1p of a constant bar volume (log1p ``log_bar``) summed over each target's bars."""
    bars = np.array([k for _, k in targets], dtype=np.float64)
    out: FloatArray = np.log1p(np.expm1(log_bar)[..., None] * bars)
    return out


def naive_targets(batch: Batch, positions: IntArray, targets: Sequence[Target]) -> FloatArray:
    """``(S, P, T)``: the naive forecast of each target (the last bar's volume, per bar of the window)."""
    return _log_window_volume(batch.log_volume[:, positions - 1], targets)


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

    def _windows(self, lv: FloatArray, positions: IntArray) -> list[tuple[int, FloatArray, FloatArray]]:
        """The SPAN bars before each position, in chunks of 8192 positions: ``(first position,
        values (S, P, SPAN) with 0 where there is no bar, 1.0 where there is one (P, SPAN))``;
        they do not depend on alpha."""
        chunks: list[tuple[int, FloatArray, FloatArray]] = []
        for lo in range(0, len(positions), 8192):
            p = positions[lo : lo + 8192]
            idx = p[:, None] - 1 - np.arange(self.SPAN)[None, :]
            present = (idx >= 0).astype(np.float64)
            values = lv[:, np.maximum(idx, 0)]
            if not present.all():
                values = values * present[None]
            chunks.append((lo, values, present))
        return chunks

    def _weighted(self, shape: tuple[int, int], chunks: list[tuple[int, FloatArray, FloatArray]],
                  weights: FloatArray) -> FloatArray:
        """Each position's weighted mean of its window, for each column of ``weights`` (SPAN, A):
        ``(S, P, A)``. A product of matrices: the weights multiplied into the windows
        element-wise and summed were most of a fit (70-100 ms for ten feeds of a day, once an
        hour per worker in the fallback, forecaster/fallback.py; benchmarks/scale.py)."""
        out = np.empty((*shape, weights.shape[1]))
        for lo, values, present in chunks:
            out[:, lo : lo + values.shape[1]] = (values @ weights) / (present @ weights)[None]
        return out

    def _apply(self, lv: FloatArray, positions: IntArray, alpha: float) -> FloatArray:
        weights = self._weights(alpha)[:, None]
        return self._weighted((lv.shape[0], len(positions)), self._windows(lv, positions), weights)[..., 0]

    def fit(self, frames: Sequence[tuple[str, BarFrame]]) -> None:
        # Each frame's windows are gathered once and weighted for every alpha in one product;
        # each alpha's error sums the frames in order.
        weights = np.stack([self._weights(alpha) for alpha in self.ALPHAS], axis=1)
        errors = np.zeros(len(self.ALPHAS))
        for _, frame in frames:
            batch = Batch.stack([frame])
            pos = fit_positions(len(frame), self.SPAN)
            if len(pos) == 0:
                continue
            chunks = self._windows(batch.log_volume, pos)
            actual = batch.log_volume[:, pos]
            pred = self._weighted((batch.log_volume.shape[0], len(pos)), chunks, weights)
            errors += ((pred - actual[..., None]) ** 2).sum(axis=(0, 1))
        best: tuple[float, float] | None = None
        for alpha, err in zip(self.ALPHAS, errors.tolist(), strict=True):
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

    def targets_of(
        self, batch: Batch, keys: Sequence[str], positions: IntArray, targets: Sequence[Target]
    ) -> FloatArray:
        """``(S, P, T)``: each target's volume as the sum of this profile's volumes over its bars
        (each bar's slot on the past days that are before the forecast)."""
        span = max(o + k for o, k in targets)
        spd = slots_per_day(batch.interval_ms)
        per_bar = np.empty((batch.volume.shape[0], len(positions), span))
        last = batch.log_volume[:, positions - 1]
        for h in range(span):
            # The same slot of bar p + h on past days, only where that bar is before p (seen).
            lv, count = np.zeros((batch.volume.shape[0], len(positions))), np.zeros(len(positions))
            for d in range(1, self.days + 1):
                idx = positions + h - d * spd
                ok = (idx >= 0) & (idx < positions)
                lv += np.where(ok[None, :], batch.log_volume[:, np.clip(idx, 0, None)], 0.0)
                count += ok
            with np.errstate(invalid="ignore", divide="ignore"):
                per_bar[:, :, h] = np.where(count[None, :] > 0, lv / count[None, :], last)
        volumes = np.expm1(per_bar)
        cum = np.concatenate([np.zeros((*volumes.shape[:2], 1)), np.cumsum(volumes, axis=2)], axis=2)
        out = np.stack([cum[..., o + k] - cum[..., o] for o, k in targets], axis=-1)
        result: FloatArray = np.log1p(np.maximum(out, 0.0))
        return result


@dataclass
class Har(LogForecaster):
    """HAR-style regression on log volume with a learned time-of-day profile per symbol."""

    name: ClassVar[str] = "har"
    coef: FloatArray = field(default_factory=lambda: np.zeros(0))
    interval_ms: int = 60_000
    profiles: dict[str, FloatArray] = field(default_factory=dict)
    global_profile: FloatArray = field(default_factory=lambda: np.zeros(0))
    look_back: int = HAR_HISTORY
    # Direct multi-horizon regressions: one coefficient row per target (forecaster/horizons.py);
    # row 0 (the next bar) is ``coef``. Empty until fitted, or for a one-step HAR.
    horizon_targets: tuple[Target, ...] = NEXT_BAR
    target_coef: FloatArray = field(default_factory=lambda: np.zeros((0, 0)))
    # The targets with their names, when this HAR serves live with horizons (the worker's
    # fallback baseline): its forecasts then carry them as the model's do.
    spec: Horizons | None = field(default=None, compare=False)
    # Window means of the profiles per window length k: (profiles dict, {k: (rows, slots)}).
    _windowed: tuple[dict[str, FloatArray], dict[int, FloatArray]] | None = field(
        default=None, init=False, repr=False, compare=False)
    # profile_at's table: (the profiles dict it was built from, stacked rows, key -> row). fit
    # assigns a new dict, which makes a table built from the old one stale.
    _table: tuple[dict[str, FloatArray], FloatArray, dict[str, int]] | None = field(
        default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.target_coef):
            self.coef = self.target_coef[0]  # as _fit_targets leaves it: one row, one array

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
        self.coef = _least_squares(x, y)
        if len(self.horizon_targets) > 1:
            self._fit_targets(frames)

    def _fit_targets(self, frames: Sequence[tuple[str, BarFrame]]) -> None:
        """One regression per target, each on the positions whose window lies in the frame."""
        span = max(o + k for o, k in self.horizon_targets)
        bases: list[FloatArray] = []
        tods: list[FloatArray] = []
        ys: list[FloatArray] = []
        for key, frame in frames:
            pos = fit_positions(len(frame), HAR_HISTORY)
            pos = pos[pos + span <= len(frame)]
            if len(pos) == 0:
                continue
            bases.append(self.fitted_design(key, frame, pos)[:, :-1])
            tods.append(self.fitted_target_tod(frame, pos))
            ys.append(log1p_window_sums(np.maximum(frame.volume, 0.0), pos, self.horizon_targets))
        if not bases:
            raise ValueError(f"HAR direct needs more than {HAR_HISTORY + span} bars of one feed to fit on")
        tod, y = np.concatenate(tods), np.concatenate(ys)
        # Target j's regressors are the base ones and its own profile term: one array whose last
        # column is each target's in turn (the same values and layout as a concatenation per
        # target, so the same solves, without copying the base once per target).
        x = np.empty((len(tod), bases[0].shape[1] + 1))
        np.concatenate(bases, out=x[:, :-1])
        rows = [self.coef]  # the next bar: the one-step HAR, fitted on every position
        for j in range(1, len(self.horizon_targets)):
            x[:, -1] = tod[:, j]
            rows.append(_least_squares(x, y[:, j]))
        self.target_coef = np.stack(rows)
        self.coef = self.target_coef[0]  # one row, never two copies that could disagree

    def fitted_target_tod(self, frame: BarFrame, positions: IntArray) -> FloatArray:
        """``(P, T)``: the profile term of each target at positions of a frame this HAR was fitted
        on, each bar's profile value leaving that bar out (as ``fitted_design``)."""
        lv = np.log1p(np.maximum(frame.volume, 0.0))
        slots = slot_of_day(frame.open_time_ms, frame.interval_ms)
        spd = slots_per_day(frame.interval_ms)
        sums = np.bincount(slots, weights=lv - lv.mean(), minlength=spd)
        counts = np.bincount(slots, minlength=spd)
        with np.errstate(invalid="ignore", divide="ignore"):
            loo = np.where(counts[slots] > 1, (sums[slots] - (lv - lv.mean())) / (counts[slots] - 1), 0.0)
        bars = np.array([k for _, k in self.horizon_targets], dtype=np.float64)
        out: FloatArray = window_sums(loo, positions, self.horizon_targets) / bars
        return out

    def target_tod(self, keys: Sequence[str], target_slots: IntArray, spd: int) -> FloatArray:
        """``(S, P, T)``: each target's mean profile over its bars' slots (``target_slots``:
        (S, P), the slot of the first coming bar)."""
        profiles = self.profiles
        if self._windowed is None or self._windowed[0] is not profiles:
            self.profile_at(keys[:1], target_slots[:1, :1])  # builds profile_at's table
            assert self._table is not None
            table = self._table[1]
            windowed: dict[int, FloatArray] = {}
            for k in sorted({k for _, k in self.horizon_targets}):
                wrapped = np.tile(table, (1, 2 + k // spd))[:, : spd + k - 1]  # windows past the last slot wrap
                cum = np.concatenate([np.zeros((len(table), 1)), np.cumsum(wrapped, axis=1)], axis=1)
                windowed[k] = (cum[:, k : k + spd] - cum[:, :spd]) / k
            self._windowed = (profiles, windowed)
        assert self._table is not None
        rows = np.fromiter((self._table[2].get(k, 0) for k in keys), dtype=np.intp, count=len(keys))
        out = np.empty((*target_slots.shape, len(self.horizon_targets)))
        by_length: dict[int, list[int]] = {}
        for j, (_, k) in enumerate(self.horizon_targets):
            by_length.setdefault(k, []).append(j)
        for k, js in by_length.items():
            offsets = np.array([self.horizon_targets[j][0] for j in js])
            slots = (target_slots[..., None] + offsets) % spd
            out[..., js] = self._windowed[1][k][rows[:, None, None], slots]
        return out

    def targets_from(self, design: FloatArray, tod: FloatArray) -> FloatArray:
        """``(S, P, T)`` forecasts from the next bar's ``design`` (S, P, 8) and ``target_tod``."""
        c = self.target_coef
        out: FloatArray = design[..., :-1] @ c[:, :-1].T + tod * c[:, -1]
        return out

    @property
    def targets(self) -> tuple[Target, ...]:
        return self.horizon_targets if len(self.target_coef) else NEXT_BAR

    @property
    def horizon_spec(self) -> Horizons:
        if self.spec is not None and len(self.target_coef) and self.spec.targets == self.horizon_targets:
            return self.spec
        return Horizons(1, ())

    def predict_targets(
        self, batch: Batch, keys: Sequence[str], positions: IntArray
    ) -> tuple[FloatArray, FloatArray | None]:
        if len(self.target_coef) == 0:
            return super().predict_targets(batch, keys, positions)
        design = self.design(batch, keys, positions)
        slots = slot_of_day(target_open_times(batch, positions), batch.interval_ms)
        tod = self.target_tod(keys, slots, slots_per_day(batch.interval_ms))
        return self.targets_from(design, tod), None

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
        meta: dict[str, Any] = {"interval_ms": self.interval_ms, "profile_keys": keys}
        if len(self.target_coef):
            tensors["har.target_coef"] = self.target_coef.astype(np.float64)
            meta["targets"] = [list(t) for t in self.horizon_targets]
        return tensors, meta

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
            horizon_targets=tuple((int(o), int(k)) for o, k in meta.get("targets", NEXT_BAR)),
            target_coef=np.asarray(tensors.get("har.target_coef", np.zeros((0, 0))), dtype=np.float64),
        )


def _least_squares(x: FloatArray, y: FloatArray) -> FloatArray:
    # A tiny ridge keeps the solve stable when the means are nearly collinear.
    gram = x.T @ x + 1e-6 * np.eye(x.shape[1]) * len(x)
    gram[0, 0] -= 1e-6 * len(x)
    return np.asarray(np.linalg.solve(gram, x.T @ y), dtype=np.float64)


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
