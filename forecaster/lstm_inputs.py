"""What the LSTM model (forecaster/lstm_model.py) reads, and the base it corrects.

Per-bar columns over each window (``per_bar``'s, plus the signed return and the log volume against
HAR's time-of-day profile) and static regressors at the target (HAR's own, the signed price moves
over ``RETURN_WINDOWS``, the target's minute of the hour, the market inputs), both normalised with
statistics of the training span (an input without spread there is dropped: fed as 0) and clipped;
and HAR's forecast of each target, with horizons plus a term on the feed's minute-of-the-hour
profile.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from forecaster.baselines import Har, fit_positions, target_open_times
from forecaster.features import (
    HAR_HISTORY,
    HAR_NAMES,
    RETURN_WINDOWS,
    Batch,
    feature_columns,
    minute_of_hour,
    per_bar,
    signed_return,
    slot_of_day,
    slots_per_day,
    trailing_returns,
)
from forecaster.frame import BarFrame, FloatArray, IntArray
from forecaster.horizons import HOUR_MS, Horizons, slot_of_hour, window_sums
from forecaster.market import MARKET_FEATURES, input_names
from volcast.settings import Feature, ModelSettings

_CYCLICAL_SUFFIXES = ("_sin", "_cos")
# The extra per-bar column: log volume minus HAR's time-of-day profile (see columns_of).
DESEASONALISED = "log_volume_vs_time_of_day"
# The extra per-bar column next to abs_return: the same move with its sign.
SIGNED_RETURN = "signed_return"
MIN_SPREAD = 1e-3
"""An input whose standard deviation over the training span is below this (all inputs are in log
or unit scale) cannot be normalised: it is dropped (fed as 0, listed in meta.json). Dividing by a
floor instead is what broke a model trained on 11 h of bars: its time-of-day inputs had no
spread there (each minute of the day seen once), so normalised by 1e-6 they came in at about 1e6
once the worker held a day of bars, and the forecast was 1.4e28."""
INPUT_CLIP = 10.0
"""Normalised inputs are clipped to +-this many standard deviations, in training and live: a bar
unlike any in the training span moves the forecast, it cannot blow it up."""
_MINUTE_ONEHOT = np.eye(60)
_NOT_PER_BAR = frozenset({"signed_return", "price_moves", "minute_of_hour", *MARKET_FEATURES})


class LstmInputs:
    """The inputs of one LSTM model, their normalisation, and its HAR base."""

    def __init__(self, settings: ModelSettings, features: Sequence[Feature], interval_ms: int,
                 horizons: Horizons) -> None:
        self.settings = settings
        self.features: tuple[Feature, ...] = tuple(features)
        # per_bar's columns; signed_return is an extra column, price_moves and minute_of_hour are
        # static inputs at the target. An artifact records both lists, so a model trained on
        # other inputs is refused on load rather than fed the wrong ones.
        self.bar_features = tuple(f for f in self.features if f not in _NOT_PER_BAR)
        self.columns = feature_columns(self.bar_features)
        if "signed_return" in self.features:
            self.columns = (*self.columns, SIGNED_RETURN)
        if "log_volume" in self.features:
            self.columns = (*self.columns, DESEASONALISED)
        self.return_windows = RETURN_WINDOWS if "price_moves" in self.features else ()
        self.minute_onehot = "minute_of_hour" in self.features
        # What the other feeds did (forecaster/market.py), read from the batch: 0 without them.
        self.market_names = input_names(self.features)
        # Static inputs at the target: HAR's regressors, the signed price moves over
        # return_windows, the target's minute of the hour (one-hot) and the market inputs.
        self.static_names: tuple[str, ...] = (
            *HAR_NAMES,
            *(f"return_{w}" for w in self.return_windows),
            *((f"minute_{m}" for m in range(60)) if self.minute_onehot else ()),
            *self.market_names,
        )
        self.interval_ms = interval_ms
        self._horizons = horizons
        self.har = Har(interval_ms=interval_ms, horizon_targets=self._horizons.targets)
        # With horizons, the base of every target is HAR direct plus a least-squares term on the
        # feed's minute-of-the-hour profile over the target's bars (``fit_hour``): the minute of
        # the hour was the largest time input of the next bar (docs/accuracy.md), and each
        # horizon needs it at its own bars. ``hour.profiles`` are those profiles (a Har holds them
        # for its window means), ``hour_coef`` (T, 2) intercept and slope per target.
        self.hour: Har | None = None
        if self._horizons.multi and HOUR_MS % interval_ms == 0 and HOUR_MS // interval_ms > 1:
            self.hour = Har(interval_ms=interval_ms, horizon_targets=self._horizons.targets)
        self.hour_coef = np.zeros((0, 2))
        c = len(self.columns)
        self.col_mean = np.zeros(c)
        self.col_std = np.ones(c)
        self.static_mean = np.zeros(len(self.static_names))
        self.static_std = np.ones(len(self.static_names))
        # Inputs without spread in the training span (MIN_SPREAD), fed as 0; see set_scales.
        self.dropped_columns: tuple[str, ...] = ()
        self.dropped_static: tuple[str, ...] = ()
        self._col_scale = np.ones(c)
        self._static_scale = np.ones(len(self.static_names))
        self.symbol_means: dict[str, float] = {}
        self.global_mean = 0.0

    def level(self, keys: Sequence[str]) -> FloatArray:
        return np.array([self.symbol_means.get(k, self.global_mean) for k in keys])

    def columns_of(self, batch: Batch, keys: Sequence[str]) -> FloatArray:
        """Per-bar columns before normalisation: ``(S, bars, len(self.columns))``.

        Log volume is taken relative to the symbol's mean level, and a last column gives it
        relative to HAR's time-of-day profile too: the network cannot learn a minute-by-minute
        profile from time_of_day's sin/cos, and the deseasonalised volume is what it should read.
        (Inside the training span each bar is part of its own slot's profile; at 1/days weight
        that only slightly shrinks the inputs, unlike the target's own profile value, which is
        left out: see ``fitted``.)
        """
        z = per_bar(batch, self.bar_features)
        extra: list[FloatArray] = []
        if SIGNED_RETURN in self.columns:
            extra.append(signed_return(batch))
        if "log_volume" in self.features:
            level = self.level(keys)
            lv = z[:, :, self.features_columns_index] - level[:, None]
            z[:, :, self.features_columns_index] = lv
            slots = slot_of_day(batch.open_time_ms, batch.interval_ms)
            extra.append(lv - self.har.profile_at(keys, slots))
        if not extra:
            return z
        return np.concatenate([z, np.stack(extra, axis=-1)], axis=-1)

    def raw_static(self, batch: Batch, keys: Sequence[str], positions: IntArray, design: FloatArray) -> FloatArray:
        """Static inputs before normalisation, ``(S, P, len(static_names))``, from HAR's design."""
        static = design[..., 1:].copy()
        static[..., :-1] -= self.level(keys)[:, None, None]  # trailing levels relative to the symbol's own
        parts = [static]
        if self.return_windows:
            parts.append(trailing_returns(batch.close, positions, self.return_windows))
        if self.minute_onehot:
            minutes = minute_of_hour(batch.open_time_ms[:, positions - 1] + batch.interval_ms)
            parts.append(_MINUTE_ONEHOT[minutes])
        if self.market_names:
            market = batch.market
            if market is None or market.values.shape[-1] != len(self.market_names):
                parts.append(np.zeros((*static.shape[:2], len(self.market_names))))
            else:
                parts.append(market.at(positions))
        return np.concatenate(parts, axis=-1) if len(parts) > 1 else static

    @property
    def features_columns_index(self) -> int:
        return feature_columns(self.bar_features).index("log_volume")

    def normalised(self, batch: Batch, keys: Sequence[str]) -> FloatArray:
        """Per-bar columns of every bar, normalised and clipped: ``(S, bars, len(self.columns))``."""
        z = (self.columns_of(batch, keys) - self.col_mean) * self._col_scale
        return np.clip(z, -INPUT_CLIP, INPUT_CLIP, out=z)

    def set_scales(self, dropped_columns: Sequence[str] | None = None,
                    dropped_static: Sequence[str] | None = None) -> None:
        """What each input is multiplied by after its mean is taken off: 1/std, 0 for a dropped
        one. The dropped inputs are those given (an artifact's record) or, by default, those
        whose std is below MIN_SPREAD (artifacts written before inputs were dropped, whose
        constant inputs were divided by a 1e-6 floor)."""
        if dropped_columns is None:
            dropped_columns = [c for c, sd in zip(self.columns, self.col_std, strict=True) if not sd >= MIN_SPREAD]
        if dropped_static is None:
            dropped_static = [c for c, sd in zip(self.static_names, self.static_std, strict=True)
                              if not sd >= MIN_SPREAD]
        unknown = (set(dropped_columns) - set(self.columns)) | (set(dropped_static) - set(self.static_names))
        if unknown:
            raise ValueError(f"dropped inputs {sorted(unknown)} are not inputs of this model")
        self.dropped_columns, self.dropped_static = tuple(dropped_columns), tuple(dropped_static)
        with np.errstate(divide="ignore"):
            self._col_scale = np.where([c in self.dropped_columns for c in self.columns], 0.0, 1.0 / self.col_std)
            self._static_scale = np.where([c in self.dropped_static for c in self.static_names], 0.0,
                                          1.0 / self.static_std)

    def at(
        self, batch: Batch, keys: Sequence[str], positions: IntArray, fitted: BarFrame | None = None
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], FloatArray]:
        """Normalised windows (S*P, L, C), static regressors (S*P, H) and HAR's forecast of each
        target (S, P, T).

        ``fitted``: the (single) frame ``batch`` was stacked from, when HAR was fitted on it; its
        profile values then leave each target out (``Har.fitted_design``), so that training sees
        HAR's regressors and forecast as they are on unseen bars.
        """
        static, har = self.statics(batch, keys, positions, fitted)
        return self.windows(batch, keys, positions), static, har

    def windows(self, batch: Batch, keys: Sequence[str], positions: IntArray) -> npt.NDArray[np.float32]:
        """The normalised per-bar columns of the look_back bars before each position: (S*P, L, C)."""
        lb = self.settings.look_back
        idx = positions[:, None] - lb + np.arange(lb)[None, :]
        if idx.min() < 0:
            raise ValueError(f"a forecast needs {lb} bars before it")
        # Per-bar columns only where the windows read them (plus one bar, for abs_return's
        # difference): the histories are HAR_HISTORY long for HAR's trailing means, but the
        # network sees the last look_back bars. Every column is per bar, so the values are the same.
        start = max(0, int(idx.min()) - 1)
        idx = idx - start
        z = self.normalised(batch.bars_from(start), keys)
        return z[:, idx].reshape(-1, lb, z.shape[-1]).astype(np.float32)

    def statics(
        self, batch: Batch, keys: Sequence[str], positions: IntArray, fitted: BarFrame | None = None
    ) -> tuple[npt.NDArray[np.float32], FloatArray]:
        """Normalised static regressors (S*P, H) and HAR's forecast of each target (S, P, T);
        ``fitted`` as in ``at``."""
        if fitted is not None:
            design = self.har.fitted_design(keys[0], fitted, positions)[None]
        else:
            design = self.har.design(batch, keys, positions)
        if self._horizons.multi:
            if fitted is not None:
                tod = self.har.fitted_target_tod(fitted, positions)[None]
            else:
                slots = slot_of_day(target_open_times(batch, positions), batch.interval_ms)
                tod = self.har.target_tod(keys, slots, slots_per_day(batch.interval_ms))
            har = self.har.targets_from(design, tod)
            if self.hour is not None and len(self.hour_coef):
                hour = self.hour.target_tod(keys, slot_of_hour(target_open_times(batch, positions), batch.interval_ms),
                                            HOUR_MS // batch.interval_ms)
                har = har + self.hour_coef[:, 0] + hour * self.hour_coef[:, 1]
        else:
            har = (design @ self.har.coef)[..., None]
        static = self.raw_static(batch, keys, positions, design)
        static = ((static - self.static_mean) * self._static_scale).reshape(-1, static.shape[-1])
        np.clip(static, -INPUT_CLIP, INPUT_CLIP, out=static)
        return static.astype(np.float32), har

    def fit_normalisation(self, frames: Sequence[tuple[str, BarFrame]]) -> None:
        self.symbol_means = {k: float(np.log1p(np.maximum(f.volume, 0.0)).mean()) for k, f in frames}
        self.global_mean = float(np.mean(list(self.symbol_means.values())))
        zs, ss = [], []
        for key, frame in frames:
            batch = Batch.stack([frame])
            zs.append(self.columns_of(batch, [key])[0])
            pos = fit_positions(len(frame), HAR_HISTORY)
            design = self.har.fitted_design(key, frame, pos)[None]
            ss.append(self.raw_static(batch, [key], pos, design)[0])
        z_all = np.concatenate(zs)
        self.col_mean = z_all.mean(axis=0)
        self.col_std = z_all.std(axis=0)
        for j, name in enumerate(self.columns):
            if name.endswith(_CYCLICAL_SUFFIXES):
                self.col_mean[j], self.col_std[j] = 0.0, 1.0
        s_all = np.concatenate(ss)
        self.static_mean = s_all.mean(axis=0)
        self.static_std = s_all.std(axis=0)
        for j, name in enumerate(self.static_names):
            if name.startswith("minute_"):  # one-hot: left as 0/1
                self.static_mean[j], self.static_std[j] = 0.0, 1.0
        if not (np.isfinite(self.col_mean).all() and np.isfinite(self.static_mean).all()):
            raise ValueError("an input is not finite in the training span (clean the bars first)")
        # Recorded in meta.json as measured; a dropped input's std is never divided by.
        self.set_scales()

    def fit_hour(self, frames: Sequence[tuple[str, BarFrame]]) -> None:
        """The minute-of-the-hour profiles (mean log volume by slot of the hour, about the
        frame's mean: some 500 bars a slot in 21 days, so no leave-one-out is needed) and one
        regression per target of HAR direct's residual on the profile's mean over its bars."""
        if self.hour is None:
            return
        sph = HOUR_MS // self.interval_ms
        profiles = {}
        for key, frame in frames:
            lv = np.log1p(np.maximum(frame.volume, 0.0))
            slots = slot_of_hour(frame.open_time_ms, frame.interval_ms)
            counts = np.bincount(slots, minlength=sph)
            profiles[key] = np.where(counts > 0, np.bincount(slots, weights=lv - lv.mean(), minlength=sph)
                                     / np.maximum(counts, 1), 0.0)
        self.hour.profiles = profiles
        self.hour.global_profile = np.mean(np.stack(list(profiles.values())), axis=0)
        self.hour_coef = np.zeros((0, 2))
        xs, ys = [], []
        for key, frame in frames:
            pos = fit_positions(len(frame), HAR_HISTORY)
            pos = pos[pos + self._horizons.span <= len(frame)]
            if len(pos) == 0:
                continue
            batch = Batch.stack([frame])
            _, base = self.statics(batch, [key], pos, fitted=frame)  # HAR direct alone (no hour_coef yet)
            ys.append(np.log1p(window_sums(np.maximum(frame.volume, 0.0), pos, self._horizons.targets)) - base[0])
            xs.append(self.hour.target_tod([key], slot_of_hour(target_open_times(batch, pos), self.interval_ms),
                                           sph)[0])
        if not xs:
            return
        x, y = np.concatenate(xs), np.concatenate(ys)
        coef = np.zeros((x.shape[1], 2))
        for j in range(x.shape[1]):
            design = np.stack([np.ones(len(x)), x[:, j]], axis=1)
            coef[j] = np.linalg.lstsq(design, y[:, j], rcond=None)[0]
        self.hour_coef = coef
