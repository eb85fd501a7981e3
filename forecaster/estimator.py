"""The trainable models around the networks: fit on frames, predict log1p volume at positions.

- ``LstmModel`` (the default, ``lstm``): HAR's forecast plus a correction that an LSTM learns
  from the last ``look_back`` bars' features (plus each bar's signed return and its volume
  against the time-of-day profile) and static inputs at the target: HAR's own regressors, the
  signed price moves over ``RETURN_WINDOWS`` and the target's minute of the hour. Quantiles by pinball loss;
  the point forecast is a separate head trained with MSE (the conditional mean of log volume,
  which is what minimises rmse_log; the median would not). With horizons (forecaster/horizons.py)
  the same forward pass forecasts every target: each coming bar and each cumulative window, as a
  correction of HAR's *direct* forecast of that target (one regression per target).
- ``SeedModel`` (``seed``): the design note's model, faithfully (raw volume in and out, MSE).
- ``EnsembleModel`` (``ensemble``): the LSTM and HAR blended with a weight fitted on validation.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch

from forecaster.baselines import Har, LogForecaster, fit_positions, target_open_times
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
    usable_features,
)
from forecaster.frame import BarFrame, FloatArray, IntArray
from forecaster.horizons import HOUR_MS, Horizons, Target, resolve, slot_of_hour, window_sums
from forecaster.lstm_prefix import Prefix, window_values
from forecaster.market import MARKET_FEATURES, input_names
from forecaster.networks import MemberAverage, SeedNet, VolumeLSTM
from volcast.settings import Feature, ModelSettings, TrainingSettings

_CYCLICAL_SUFFIXES = ("_sin", "_cos")
# The extra per-bar column: log volume minus HAR's time-of-day profile (see _columns_of).
DESEASONALISED = "log_volume_vs_time_of_day"
# The extra per-bar column next to abs_return: the same move with its sign.
SIGNED_RETURN = "signed_return"
_CHUNK = 4096
MIN_SPREAD = 1e-3
"""An input whose standard deviation over the training span is below this (all inputs are in log
or unit scale) cannot be normalised: it is dropped (fed as 0, listed in meta.json). Dividing by a
floor instead is what broke a model trained on 11 h of bars: its time-of-day inputs had no
spread there (each minute of the day seen once), so normalised by 1e-6 they came in at about 1e6
once the worker held a day of bars, and the forecast was 1.4e28."""
INPUT_CLIP = 10.0
"""Normalised inputs are clipped to +-this many standard deviations, in training and live: a bar
unlike any in the training span moves the forecast, it cannot blow it up."""
NEXT_BAR_WEIGHT = 0.8
"""The next bar's share of the training loss of a model with horizons (the other targets share
the rest equally): it is what most readers use (docs/accuracy.md#horizons)."""
MAX_TARGET_SCALE = 10.0
"""A target's loss is scaled up by at most this much for a base error smaller than the next bar's
(``target_loss_weights``): a window of near-constant volume must not take over the training."""
_MINUTE_ONEHOT = np.eye(60)
_NOT_PER_BAR = frozenset({"signed_return", "price_moves", "minute_of_hour", *MARKET_FEATURES})


@dataclass(frozen=True, slots=True)
class EpochReport:
    epoch: int
    epochs: int
    train_loss: float
    val_loss: float | None
    seconds: float
    best: bool


Progress = Callable[[EpochReport], None]


def print_progress(report: EpochReport) -> None:
    """One line per epoch on stderr."""
    val = f" val {report.val_loss:.5f}" if report.val_loss is not None else ""
    star = " *" if report.best else ""
    print(
        f"epoch {report.epoch}/{report.epochs} loss {report.train_loss:.5f}{val} {report.seconds:.1f}s{star}",
        file=sys.stderr,
        flush=True,
    )


def quiet(report: EpochReport) -> None:
    return None


def cap_frames(frames: Sequence[tuple[str, BarFrame]], max_bars: int) -> list[tuple[str, BarFrame]]:
    return [(k, f.tail(max_bars) if max_bars else f) for k, f in frames]


def _pinball(pred: torch.Tensor, target: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """pred (..., Q), target (...) -> mean pinball loss."""
    diff = target.unsqueeze(-1) - pred
    return torch.maximum(levels * diff, (levels - 1) * diff).mean()


def target_loss_weights(residuals: torch.Tensor, next_bar_weight: float = NEXT_BAR_WEIGHT
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per target, the weight of its MSE and of its pinball loss, from the targets' residuals on
    their bases over the training rows (B, T): the next bar ``next_bar_weight`` of the loss and the
    others equal shares of the rest, each then in units of its own base error (its MSE divided by
    its base's mean squared residual, its pinball by the root of that), the next bar's scale kept.
    A window's error is 2 to 4 times smaller in variance than a single bar's, so in raw units the
    windows were the targets trained least (docs/accuracy.md#horizons, "what was tried")."""
    n = residuals.shape[1]
    shares = torch.full((n,), (1.0 - next_bar_weight) / max(1, n - 1))
    shares[0] = 1.0 if n == 1 else next_bar_weight
    var = (residuals.double() ** 2).mean(dim=0).clamp_min(1e-6).float()
    scale = (var[0] / var).clamp(max=MAX_TARGET_SCALE)
    return shares * scale, shares * torch.sqrt(scale)


def _batches(n: int, size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(torch.split(order, size))


class LstmModel(LogForecaster):
    name: ClassVar[str] = "lstm"
    def __init__(self, settings: ModelSettings, features: Sequence[Feature], interval_ms: int) -> None:
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
        self.look_back = max(settings.look_back, HAR_HISTORY)
        self._horizons = resolve(settings, interval_ms)
        self.har = Har(interval_ms=interval_ms, horizon_targets=self._horizons.targets)
        # With horizons, the base of every target is HAR direct plus a least-squares term on the
        # feed's minute-of-the-hour profile over the target's bars (``_fit_hour``): the minute of
        # the hour was the largest time input of the next bar (docs/accuracy.md), and each
        # horizon needs it at its own bars. ``hour.profiles`` are those profiles (a Har holds them
        # for its window means), ``hour_coef`` (T, 2) intercept and slope per target.
        self.hour: Har | None = None
        if self._horizons.multi and HOUR_MS % interval_ms == 0 and HOUR_MS // interval_ms > 1:
            self.hour = Har(interval_ms=interval_ms, horizon_targets=self._horizons.targets)
        self.hour_coef = np.zeros((0, 2))
        # Per target, how much of the network's correction is used (fitted on the validation
        # part: where the network does not beat the base there, it is scaled down); ones = all.
        self.shrink = np.ones(len(self._horizons.targets))
        c = len(self.columns)
        self.col_mean = np.zeros(c)
        self.col_std = np.ones(c)
        self.static_mean = np.zeros(len(self.static_names))
        self.static_std = np.ones(len(self.static_names))
        # Inputs without spread in the training span (MIN_SPREAD), fed as 0; see _set_scales.
        self.dropped_columns: tuple[str, ...] = ()
        self.dropped_static: tuple[str, ...] = ()
        self._col_scale = np.ones(c)
        self._static_scale = np.ones(len(self.static_names))
        self.symbol_means: dict[str, float] = {}
        self.global_mean = 0.0
        self.net = MemberAverage([self._new_member() for _ in range(settings.members)])
        # Set by prepare_next (replaced whole, never changed in place: the worker may read it
        # from its event loop's thread while its predictor thread prepares the next one).
        self.prefix: Prefix | None = None
        self.prefix_hits = 0
        self.prefix_misses = 0

    def _new_member(self) -> VolumeLSTM:
        return VolumeLSTM(
            n_features=len(self.columns),
            n_static=len(self.static_names),
            hidden=self.settings.hidden,
            layers=self.settings.layers,
            dropout=self.settings.dropout,
            n_quantiles=len(self.settings.quantiles),
            attention=self.settings.attention,
            n_targets=len(self._horizons.targets),
        )

    @property
    def horizon_spec(self) -> Horizons:
        return self._horizons

    @property
    def targets(self) -> tuple[Target, ...]:
        return self._horizons.targets

    @property
    def quantile_levels(self) -> tuple[float, ...]:
        return self.settings.quantiles

    @property
    def min_history(self) -> int:
        return self.settings.look_back

    def _level(self, keys: Sequence[str]) -> FloatArray:
        return np.array([self.symbol_means.get(k, self.global_mean) for k in keys])

    def _columns_of(self, batch: Batch, keys: Sequence[str]) -> FloatArray:
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
            level = self._level(keys)
            lv = z[:, :, self.features_columns_index] - level[:, None]
            z[:, :, self.features_columns_index] = lv
            slots = slot_of_day(batch.open_time_ms, batch.interval_ms)
            extra.append(lv - self.har.profile_at(keys, slots))
        if not extra:
            return z
        return np.concatenate([z, np.stack(extra, axis=-1)], axis=-1)

    def _raw_static(self, batch: Batch, keys: Sequence[str], positions: IntArray, design: FloatArray) -> FloatArray:
        """Static inputs before normalisation, ``(S, P, len(static_names))``, from HAR's design."""
        static = design[..., 1:].copy()
        static[..., :-1] -= self._level(keys)[:, None, None]  # trailing levels relative to the symbol's own
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

    def _normalised(self, batch: Batch, keys: Sequence[str]) -> FloatArray:
        """Per-bar columns of every bar, normalised and clipped: ``(S, bars, len(self.columns))``."""
        z = (self._columns_of(batch, keys) - self.col_mean) * self._col_scale
        return np.clip(z, -INPUT_CLIP, INPUT_CLIP, out=z)

    def _set_scales(self, dropped_columns: Sequence[str] | None = None,
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

    def _inputs(
        self, batch: Batch, keys: Sequence[str], positions: IntArray, fitted: BarFrame | None = None
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], FloatArray]:
        """Normalised windows (S*P, L, C), static regressors (S*P, H) and HAR's forecast of each
        target (S, P, T).

        ``fitted``: the (single) frame ``batch`` was stacked from, when HAR was fitted on it; its
        profile values then leave each target out (``Har.fitted_design``), so that training sees
        HAR's regressors and forecast as they are on unseen bars.
        """
        static, har = self._statics(batch, keys, positions, fitted)
        return self._windows(batch, keys, positions), static, har

    def _windows(self, batch: Batch, keys: Sequence[str], positions: IntArray) -> npt.NDArray[np.float32]:
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
        z = self._normalised(batch.bars_from(start), keys)
        return z[:, idx].reshape(-1, lb, z.shape[-1]).astype(np.float32)

    def _statics(
        self, batch: Batch, keys: Sequence[str], positions: IntArray, fitted: BarFrame | None = None
    ) -> tuple[npt.NDArray[np.float32], FloatArray]:
        """Normalised static regressors (S*P, H) and HAR's forecast of each target (S, P, T);
        ``fitted`` as in ``_inputs``."""
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
        static = self._raw_static(batch, keys, positions, design)
        static = ((static - self.static_mean) * self._static_scale).reshape(-1, static.shape[-1])
        np.clip(static, -INPUT_CLIP, INPUT_CLIP, out=static)
        return static.astype(np.float32), har

    def _fit_normalisation(self, frames: Sequence[tuple[str, BarFrame]]) -> None:
        self.symbol_means = {k: float(np.log1p(np.maximum(f.volume, 0.0)).mean()) for k, f in frames}
        self.global_mean = float(np.mean(list(self.symbol_means.values())))
        zs, ss = [], []
        for key, frame in frames:
            batch = Batch.stack([frame])
            zs.append(self._columns_of(batch, [key])[0])
            pos = fit_positions(len(frame), HAR_HISTORY)
            design = self.har.fitted_design(key, frame, pos)[None]
            ss.append(self._raw_static(batch, [key], pos, design)[0])
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
        self._set_scales()

    def _fit_hour(self, frames: Sequence[tuple[str, BarFrame]]) -> None:
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
            _, base = self._statics(batch, [key], pos, fitted=frame)  # HAR direct alone (no hour_coef yet)
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

    def fit_model(
        self, frames: Sequence[tuple[str, BarFrame]], training: TrainingSettings, progress: Progress
    ) -> dict[str, float]:
        self.har.fit(frames)
        self._fit_hour(frames)
        self._fit_normalisation(frames)
        parts: dict[str, list[Any]] = {k: [] for k in ("xt", "st", "yt", "xv", "sv", "yv")}
        targets = self._horizons.targets
        span = self._horizons.span
        for key, frame in frames:
            batch = Batch.stack([frame])
            pos = fit_positions(len(frame), self.look_back)
            # Every target's window must lie in the frame (the next bar alone: every position).
            pos = pos[(pos >= self.settings.look_back) & (pos + span <= len(frame))]
            if len(pos) < 2:
                continue
            split = len(pos) - max(1, int(len(pos) * training.validation_fraction))
            # Training targets must not read validation bars: span - 1 positions between them.
            for name, sel in (("t", pos[: max(1, split - (span - 1))]), ("v", pos[split:])):
                x, s, har = self._inputs(batch, [key], sel, fitted=frame)
                y = np.log1p(window_sums(np.maximum(frame.volume, 0.0), sel, targets))
                parts["x" + name].append(x)
                parts["s" + name].append(s)
                parts["y" + name].append((y - har[0]).astype(np.float32))
        if not parts["xt"]:
            raise ValueError(f"not enough bars to train: need more than {self.look_back} per symbol")
        xt, st, yt = (torch.from_numpy(np.concatenate(parts[k])) for k in ("xt", "st", "yt"))
        xv, sv, yv = (torch.from_numpy(np.concatenate(parts[k])) for k in ("xv", "sv", "yv"))
        levels = torch.tensor(self.settings.quantiles, dtype=torch.float32)
        n_targets = len(targets)
        # With 62 equal shares the next bar was 3% behind the model of the next bar only.
        mse_weights, pinball_weights = target_loss_weights(yt)

        def loss_of(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            # out (B, T * (1 + Q)) target-major, y (B, T).
            out = out.view(len(out), n_targets, -1)
            loss = (torch.mean((out[..., 0] - y) ** 2, dim=0) * mse_weights).sum()
            if len(self.settings.quantiles):
                diff = y.unsqueeze(-1) - out[..., 1:]
                pinball = torch.maximum(levels * diff, (levels - 1) * diff).mean(dim=(0, 2))
                loss = loss + (pinball * pinball_weights).sum()
            return loss

        # The feature pipeline above is shared; each member then trains alone from its own seed
        # (init and batch order), so averaging them cuts the seed-to-seed variance.
        members, epochs_run = [], 0
        for k in range(self.settings.members):
            member, epochs = self._train_member(
                training, training.seed + k, (xt, st, yt), (xv, sv, yv), loss_of, progress
            )
            members.append(member)
            epochs_run += epochs
        self.net = MemberAverage(members)
        self.net.eval()
        if n_targets > 1:
            self._fit_shrink(xv, sv, yv)
        val = self._eval_loss(self.net, xv, sv, yv, loss_of)
        return {"val_loss": val, "epochs_run": float(epochs_run), "train_samples": float(len(yt))}

    def _fit_shrink(self, x: torch.Tensor, s: torch.Tensor, y: torch.Tensor) -> None:
        """Per target, the share of the network's mean correction that fits the validation part
        best (least squares, within 0..1); the quantiles move with the mean."""
        with torch.inference_mode():
            out = torch.cat([self.net(x[lo : lo + _CHUNK], s[lo : lo + _CHUNK]) for lo in range(0, len(y), _CHUNK)])
        c = out.view(len(y), len(self.shrink), -1)[..., 0].numpy().astype(np.float64)
        r = y.numpy().astype(np.float64)
        cc = (c * c).sum(axis=0)
        self.shrink = np.where(cc > 0, np.clip((c * r).sum(axis=0) / np.where(cc > 0, cc, 1.0), 0.0, 1.0), 1.0)

    def _train_member(
        self,
        training: TrainingSettings,
        seed: int,
        train: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        valid: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        progress: Progress,
    ) -> tuple[VolumeLSTM, int]:
        """One member trained from ``seed``: its best state on validation, and the epochs it ran."""
        xt, st, yt = train
        torch.manual_seed(seed)
        net = self._new_member()
        opt = torch.optim.Adam(net.parameters(), lr=training.learning_rate)
        # Cosine decay over the whole run: late epochs take small steps, which steadies the
        # validation loss that early stopping reads (noisy at a constant rate on these data).
        steps = training.epochs * -(-len(yt) // training.batch_size)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=0.05 * training.learning_rate)
        gen = torch.Generator().manual_seed(seed)
        best_val = float("inf")
        best_state = {k: v.clone() for k, v in net.state_dict().items()}
        stale = 0
        epoch = 0
        for epoch in range(1, training.epochs + 1):
            started = time.perf_counter()
            net.train()
            total = 0.0
            for idx in _batches(len(yt), training.batch_size, gen):
                opt.zero_grad()
                loss = loss_of(net(xt[idx], st[idx]), yt[idx])
                loss.backward()  # type: ignore[no-untyped-call]
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                opt.step()
                schedule.step()
                total += float(loss.detach()) * len(idx)
            val = self._eval_loss(net, *valid, loss_of)
            improved = val < best_val
            if improved:
                best_val = val
                best_state = {k: v.clone() for k, v in net.state_dict().items()}
                stale = 0
            else:
                stale += 1
            progress(EpochReport(epoch, training.epochs, total / len(yt), val, time.perf_counter() - started, improved))
            if training.patience and stale >= training.patience:
                break
        net.load_state_dict(best_state)
        net.eval()
        return net, epoch

    def _eval_loss(
        self,
        net: torch.nn.Module,
        x: torch.Tensor,
        s: torch.Tensor,
        y: torch.Tensor,
        loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> float:
        net.eval()
        total = 0.0
        with torch.inference_mode():
            for lo in range(0, len(y), _CHUNK):
                sl = slice(lo, lo + _CHUNK)
                total += float(loss_of(net(x[sl], s[sl]), y[sl])) * len(y[sl])
        return total / max(1, len(y))

    def fit(self, frames: Sequence[tuple[str, BarFrame]]) -> None:
        self.fit_model(frames, TrainingSettings(), quiet)

    def fitted_points(self, key: str, frame: BarFrame, positions: IntArray) -> tuple[FloatArray, FloatArray]:
        """``(lstm, har)`` point forecasts (P,) at positions of a frame the model was fitted on."""
        batch = Batch.stack([frame])
        points, hars = [], []
        self.net.eval()
        for lo in range(0, len(positions), _CHUNK):
            pos = positions[lo : lo + _CHUNK]
            x, s, har = self._inputs(batch, [key], pos, fitted=frame)
            with torch.inference_mode():
                out = self.net(torch.from_numpy(x), torch.from_numpy(s)).numpy().astype(np.float64)
            points.append(out[:, 0] + har[0, :, 0])
            hars.append(har[0, :, 0])
        return np.concatenate(points), np.concatenate(hars)

    def predict_log(
        self, batch: Batch, keys: Sequence[str], positions: IntArray
    ) -> tuple[FloatArray, FloatArray | None]:
        point, quants = self.predict_targets(batch, keys, positions)
        return point[..., 0], None if quants is None else quants[..., 0, :]

    def predict_targets(
        self, batch: Batch, keys: Sequence[str], positions: IntArray
    ) -> tuple[FloatArray, FloatArray | None]:
        prefix = self.prefix  # read once: prepare_next may replace it from another thread
        live = len(positions) == 1 and int(positions[0]) == batch.volume.shape[1]  # the bar after the batch
        if live and prefix is not None and batch.volume.shape[1] > self.settings.look_back:
            return self._predict_next(batch, keys, positions, prefix)
        s_count, p_count = batch.volume.shape[0], len(positions)
        if live:
            self.prefix_misses += s_count
        t_count = len(self._horizons.targets)
        points = np.empty((s_count, p_count, t_count))
        quants = np.empty((s_count, p_count, t_count, len(self.settings.quantiles)))
        self.net.eval()
        step = max(1, _CHUNK // s_count)
        for lo in range(0, p_count, step):
            pos = positions[lo : lo + step]
            x, s, har = self._inputs(batch, keys, pos)
            with torch.inference_mode():
                out = self.net(torch.from_numpy(x), torch.from_numpy(s)).numpy().astype(np.float64)
            points[:, lo : lo + step], quants[:, lo : lo + step] = self._outputs(out, har)
        return points, quants if len(self.settings.quantiles) else None

    def _outputs(self, out: FloatArray, har: FloatArray) -> tuple[FloatArray, FloatArray]:
        """The network's rows (S*P, T * (1 + Q)), residuals on HAR's (S, P, T) -> points (S, P, T),
        sorted quantiles (S, P, T, Q)."""
        full = out.reshape(*har.shape, -1)
        if len(self.shrink) > 1:
            shift = (self.shrink - 1.0) * full[..., 0]
            full = full + shift[..., None]
        full = full + har[..., None]
        return full[..., 0], np.sort(full[..., 1:], axis=-1)

    @property
    def prepare_bars(self) -> int:
        # A prepared window's first bar has its return from the bar before it: the live history
        # (HAR's day of bars) holds that bar only when the window is shorter than the history.
        # A look_back of a day or more gets whole windows, whose first return is 0.
        return self.settings.look_back if self.look_back > self.settings.look_back else 0

    def prepared_counts(self) -> tuple[int, int]:
        return (self.prefix_hits, self.prefix_misses)

    def prepare_next(self, batch: Batch, keys: Sequence[str]) -> None:
        """Run the LSTM over the bars that each history's next window shares with it: its last
        look_back - 1 bars (forecaster/lstm_prefix.py). ``predict_log`` of the bar after the
        batch's last then takes one LSTM step for every history these bars still match."""
        lb = self.settings.look_back
        n = batch.volume.shape[1]
        if n < lb:
            raise ValueError(f"preparing the next window needs {lb} bars, got {n}")
        recent = batch.bars_from(n - lb)
        # The first of these bars gives only its close, to the second bar's return.
        z = self._normalised(recent, keys)[:, 1:].astype(np.float32)
        self.net.eval()
        with torch.inference_mode():
            states = self.net.begin(torch.from_numpy(z))
        self.prefix = Prefix.of(keys, window_values(recent, 0, lb), states)

    def _predict_next(
        self, batch: Batch, keys: Sequence[str], positions: IntArray, prefix: Prefix
    ) -> tuple[FloatArray, FloatArray | None]:
        """``predict_log`` at the bar after the batch: one LSTM step where ``prefix`` matches."""
        lb = self.settings.look_back
        n = batch.volume.shape[1]
        rows, hit = prefix.match(keys, window_values(batch, n - lb - 1, n - 1))
        static, har = self._statics(batch, keys, positions)
        out = np.empty((len(keys), len(self._horizons.targets) * (1 + len(self.settings.quantiles))),
                       dtype=np.float32)
        reuse = np.flatnonzero(hit)
        fresh = np.flatnonzero(~hit)
        self.net.eval()
        with torch.inference_mode():
            if len(reuse):
                # The newest bar's columns need the bar before it too (its return).
                last = self._normalised(batch.bars_from(n - 2).rows(reuse), [keys[i] for i in reuse.tolist()])[:, -1:]
                states = [state.rows(torch.from_numpy(rows[reuse])) for state in prefix.states]
                out[reuse] = self.net.resume(states, torch.from_numpy(last.astype(np.float32)),
                                             torch.from_numpy(static[reuse])).numpy()
            if len(fresh):
                # Only the bars the windows read (and the one before, for the first return).
                recent = batch.bars_from(n - lb - 1).rows(fresh)
                windows = self._windows(recent, [keys[i] for i in fresh.tolist()], np.array([lb + 1]))
                out[fresh] = self.net(torch.from_numpy(windows), torch.from_numpy(static[fresh])).numpy()
        self.prefix_hits += len(reuse)
        self.prefix_misses += len(fresh)
        points, quants = self._outputs(out.astype(np.float64), har)
        return points, quants if len(self.settings.quantiles) else None

    # -- artifact parts --
    def tensors(self) -> dict[str, npt.NDArray[Any]]:
        out = {f"net.{k}": v.detach().numpy().copy() for k, v in self.net.state_dict().items()}
        har_tensors, _ = self.har.state()
        out.update(har_tensors)
        if self._horizons.multi:
            out["shrink"] = self.shrink.astype(np.float64)
            if self.hour is not None and len(self.hour_coef):
                out["hour.coef"] = self.hour_coef.astype(np.float64)
                out["hour.global_profile"] = self.hour.global_profile.astype(np.float64)
                out["hour.profiles"] = np.stack([self.hour.profiles[k] for k in sorted(self.hour.profiles)])
        return out

    def meta(self) -> dict[str, Any]:
        _, har_meta = self.har.state()
        return {
            "features": list(self.features),
            "columns": list(self.columns),
            "static": list(self.static_names),
            "interval_ms": self.interval_ms,
            "horizons": {"bars": self._horizons.bars, "sums": [list(s) for s in self._horizons.sums]},
            "normalisation": {
                "column_mean": self.col_mean.tolist(),
                "column_std": self.col_std.tolist(),
                "static_mean": self.static_mean.tolist(),
                "static_std": self.static_std.tolist(),
                "dropped_columns": list(self.dropped_columns),
                "dropped_static": list(self.dropped_static),
                "min_spread": MIN_SPREAD,
                "input_clip": INPUT_CLIP,
                "symbol_log_volume_mean": self.symbol_means,
                "global_log_volume_mean": self.global_mean,
            },
            "har": har_meta,
            **({"hour_profile_keys": sorted(self.hour.profiles)} if self.hour is not None and len(self.hour_coef)
               else {}),
        }

    @classmethod
    def from_parts(
        cls, settings: ModelSettings, tensors: dict[str, npt.NDArray[Any]], meta: dict[str, Any]
    ) -> LstmModel:
        model = cls(settings, meta["features"], int(meta["interval_ms"]))
        # An artifact from before horizons forecasts the next bar only.
        recorded = meta.get("horizons", {"bars": 1, "sums": []})
        trained = Horizons(int(recorded["bars"]), tuple((str(lb), int(k)) for lb, k in recorded["sums"]))
        if trained != model.horizon_spec:
            raise ValueError(
                f"trained for {_describe(trained)}, the running settings ask for {_describe(model.horizon_spec)}: "
                "retrain it (volcast train), or set model.horizons and model.horizon_sums to what it was "
                "trained for (a model from before horizons: horizons 1, horizon_sums [])")
        if list(meta.get("columns", [])) != list(model.columns):
            raise ValueError(f"per-bar columns {meta.get('columns')} are not this volcast's {list(model.columns)}")
        if list(meta.get("static", [])) != list(model.static_names):
            raise ValueError(f"static inputs {meta.get('static')} are not this volcast's {list(model.static_names)}")
        norm = meta["normalisation"]
        model.col_mean = np.asarray(norm["column_mean"], dtype=np.float64)
        model.col_std = np.asarray(norm["column_std"], dtype=np.float64)
        model.static_mean = np.asarray(norm["static_mean"], dtype=np.float64)
        model.static_std = np.asarray(norm["static_std"], dtype=np.float64)
        if model.col_mean.shape != (len(model.columns),) or model.static_mean.shape != (len(model.static_names),):
            raise ValueError("normalisation statistics do not match the features")
        model._set_scales(norm.get("dropped_columns"), norm.get("dropped_static"))
        model.symbol_means = {str(k): float(v) for k, v in norm["symbol_log_volume_mean"].items()}
        model.global_mean = float(norm["global_log_volume_mean"])
        model.har = Har.from_state(tensors, meta["har"])
        if model.har.coef.shape != (len(HAR_NAMES) + 1,):
            raise ValueError(f"HAR coefficients have shape {model.har.coef.shape}")
        if trained.multi and (model.har.horizon_targets != trained.targets
                              or model.har.target_coef.shape != (len(trained.targets), len(HAR_NAMES) + 1)):
            raise ValueError(f"HAR's direct coefficients {model.har.target_coef.shape} do not fit {_describe(trained)}")
        if trained.multi:
            model.shrink = np.asarray(tensors["shrink"], dtype=np.float64)
            if model.shrink.shape != (len(trained.targets),):
                raise ValueError(f"shrink has shape {model.shrink.shape}")
            if model.hour is not None and "hour.coef" in tensors:
                model.hour_coef = np.asarray(tensors["hour.coef"], dtype=np.float64)
                model.hour.global_profile = np.asarray(tensors["hour.global_profile"], dtype=np.float64)
                model.hour.profiles = {str(k): np.asarray(row, dtype=np.float64)
                                       for k, row in zip(meta["hour_profile_keys"], tensors["hour.profiles"],
                                                         strict=True)}
                if model.hour_coef.shape != (len(trained.targets), 2):
                    raise ValueError(f"hour coefficients have shape {model.hour_coef.shape}")
        state = {k.removeprefix("net."): torch.from_numpy(v.copy()) for k, v in tensors.items() if k.startswith("net.")}
        model.net.load_state_dict(state, strict=True)
        model.net.eval()
        return model


class SeedModel(LogForecaster):
    """The design note's model, kept faithful: raw volumes, no normalisation, MSE, Adam."""

    name: ClassVar[str] = "seed"
    UNITS: ClassVar[int] = 50

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self.look_back = settings.look_back
        self.net = SeedNet(self.UNITS)

    @property
    def min_history(self) -> int:
        return self.look_back

    def _windows(self, volume: FloatArray, positions: IntArray) -> npt.NDArray[np.float32]:
        lb = self.look_back
        idx = positions[:, None] - lb + np.arange(lb)[None, :]
        if idx.min() < 0:
            raise ValueError(f"a forecast needs {lb} bars before it")
        return volume[:, idx].reshape(-1, lb, 1).astype(np.float32)

    def fit_model(
        self, frames: Sequence[tuple[str, BarFrame]], training: TrainingSettings, progress: Progress
    ) -> dict[str, float]:
        torch.manual_seed(training.seed)
        self.net = SeedNet(self.UNITS)
        xs, ys = [], []
        for _, frame in frames:
            pos = np.arange(self.look_back, len(frame), dtype=np.int64)
            if len(pos):
                xs.append(self._windows(frame.volume[None, :], pos))
                ys.append(frame.volume[pos].astype(np.float32))
        if not xs:
            raise ValueError(f"not enough bars to train: need more than {self.look_back}")
        x = torch.from_numpy(np.concatenate(xs))
        y = torch.from_numpy(np.concatenate(ys)).unsqueeze(1)
        opt = torch.optim.Adam(self.net.parameters(), lr=training.learning_rate)
        gen = torch.Generator().manual_seed(training.seed)
        self.net.train()
        loss_value = float("nan")
        for epoch in range(1, training.epochs + 1):
            started = time.perf_counter()
            total = 0.0
            for idx in _batches(len(y), training.batch_size, gen):
                opt.zero_grad()
                loss = torch.mean((self.net(x[idx]) - y[idx]) ** 2)
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                total += float(loss.detach()) * len(idx)
            loss_value = total / len(y)
            progress(EpochReport(epoch, training.epochs, loss_value, None, time.perf_counter() - started, False))
        self.net.eval()
        return {"train_loss": loss_value, "epochs_run": float(training.epochs), "train_samples": float(len(y))}

    def fit(self, frames: Sequence[tuple[str, BarFrame]]) -> None:
        self.fit_model(frames, TrainingSettings(), quiet)

    def predict_log(
        self, batch: Batch, keys: Sequence[str], positions: IntArray
    ) -> tuple[FloatArray, FloatArray | None]:
        s_count = batch.volume.shape[0]
        out = np.empty((s_count, len(positions)))
        step = max(1, _CHUNK // s_count)
        self.net.eval()
        for lo in range(0, len(positions), step):
            pos = positions[lo : lo + step]
            with torch.inference_mode():
                pred = self.net(torch.from_numpy(self._windows(batch.volume, pos))).numpy()
            out[:, lo : lo + step] = pred.reshape(s_count, len(pos))
        # Dense(1) is linear and can go negative; a volume cannot.
        return np.log1p(np.maximum(np.nan_to_num(out, nan=0.0), 0.0)), None

    def tensors(self) -> dict[str, npt.NDArray[Any]]:
        return {f"net.{k}": v.detach().numpy().copy() for k, v in self.net.state_dict().items()}

    def meta(self) -> dict[str, Any]:
        return {"features": ["volume"], "units": self.UNITS}

    @classmethod
    def from_parts(
        cls, settings: ModelSettings, tensors: dict[str, npt.NDArray[Any]], meta: dict[str, Any]
    ) -> SeedModel:
        model = cls(settings)
        state = {k.removeprefix("net."): torch.from_numpy(v.copy()) for k, v in tensors.items()}
        model.net.load_state_dict(state, strict=True)
        model.net.eval()
        return model


class EnsembleModel(LogForecaster):
    """``weight * lstm + (1 - weight) * har`` in log space; the weight fitted on validation."""

    name: ClassVar[str] = "ensemble"

    def __init__(self, lstm: LstmModel, weight: float = 1.0) -> None:
        self.lstm = lstm
        self.weight = weight
        self.look_back = lstm.look_back

    @property
    def quantile_levels(self) -> tuple[float, ...]:
        return self.lstm.quantile_levels

    @property
    def min_history(self) -> int:
        return self.lstm.min_history

    @property
    def horizon_spec(self) -> Horizons:
        return self.lstm.horizon_spec

    @property
    def targets(self) -> tuple[Target, ...]:
        return self.lstm.targets

    def fit_weight(self, frames: Sequence[tuple[str, BarFrame]], validation_fraction: float) -> float:
        a_parts, b_parts, y_parts = [], [], []
        for key, frame in frames:
            pos = fit_positions(len(frame), self.look_back)
            pos = pos[len(pos) - max(1, int(len(pos) * validation_fraction)) :]
            lstm_point, har_point = self.lstm.fitted_points(key, frame, pos)
            a_parts.append(lstm_point)
            b_parts.append(har_point)
            y_parts.append(np.log1p(np.maximum(frame.volume[pos], 0.0)))
        a, b, y = (np.concatenate(p) for p in (a_parts, b_parts, y_parts))
        d = a - b
        denom = float(d @ d)
        self.weight = float(np.clip((d @ (y - b)) / denom, 0.0, 1.0)) if denom > 0 else 1.0
        return self.weight

    def fit(self, frames: Sequence[tuple[str, BarFrame]]) -> None:
        self.lstm.fit(frames)
        self.fit_weight(frames, TrainingSettings().validation_fraction)

    @property
    def prepare_bars(self) -> int:
        return self.lstm.prepare_bars

    def prepared_counts(self) -> tuple[int, int]:
        return self.lstm.prepared_counts()

    def prepare_next(self, batch: Batch, keys: Sequence[str]) -> None:
        self.lstm.prepare_next(batch, keys)

    def predict_log(
        self, batch: Batch, keys: Sequence[str], positions: IntArray
    ) -> tuple[FloatArray, FloatArray | None]:
        point, quants = self.predict_targets(batch, keys, positions)
        return point[..., 0], None if quants is None else quants[..., 0, :]

    def predict_targets(
        self, batch: Batch, keys: Sequence[str], positions: IntArray
    ) -> tuple[FloatArray, FloatArray | None]:
        lstm_point, quants = self.lstm.predict_targets(batch, keys, positions)
        har_point = self.lstm.har.predict_targets(batch, keys, positions)[0]
        point = self.weight * lstm_point + (1 - self.weight) * har_point
        if quants is not None:
            quants = quants + (point - lstm_point)[..., None]
        return point, quants


def _describe(horizons: Horizons) -> str:
    sums = ", ".join(label for label, _ in horizons.sums)
    return f"{horizons.bars} horizon(s)" + (f" and sums over {sums}" if sums else "")


def build_untrained(settings: ModelSettings, features: Sequence[Feature], interval_ms: int) -> LogForecaster:
    if settings.name == "seed":
        return SeedModel(settings)
    lstm = LstmModel(settings, features, interval_ms)
    return EnsembleModel(lstm) if settings.name == "ensemble" else lstm


def effective_features(settings: ModelSettings, frames: Sequence[tuple[str, BarFrame]]) -> tuple[Feature, ...]:
    known = frozenset.intersection(*(f.known for _, f in frames))
    return usable_features(settings.features, known)
