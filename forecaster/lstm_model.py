"""``LstmModel`` (the default, ``lstm``): HAR's forecast plus a correction that an LSTM learns
from the last ``look_back`` bars' features (plus each bar's signed return and its volume against
the time-of-day profile) and static inputs at the target: HAR's own regressors, the signed price
moves over ``RETURN_WINDOWS`` and the target's minute of the hour. Quantiles by pinball loss; the
point forecast is a separate head trained with MSE (the conditional mean of log volume, which is
what minimises rmse_log; the median would not). With horizons (forecaster/horizons.py) the same
forward pass forecasts every target: each coming bar and each cumulative window, as a correction
of HAR's *direct* forecast of that target (one regression per target).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch

from forecaster.baselines import Har, LogForecaster, fit_positions
from forecaster.features import (
    HAR_HISTORY,
    HAR_NAMES,
    Batch,
)
from forecaster.frame import BarFrame, FloatArray, IntArray
from forecaster.horizons import Horizons, Target, resolve, window_sums
from forecaster.lstm_inputs import INPUT_CLIP, MIN_SPREAD, LstmInputs
from forecaster.lstm_prefix import Prefix, window_values
from forecaster.networks import MemberAverage, VolumeLSTM
from forecaster.target_loss import target_loss
from forecaster.training_loop import CHUNK, Progress, eval_loss, quiet, train_member
from volcast.settings import Feature, ModelSettings, TrainingSettings


class LstmModel(LogForecaster):
    name: ClassVar[str] = "lstm"
    def __init__(self, settings: ModelSettings, features: Sequence[Feature], interval_ms: int) -> None:
        self.settings = settings
        self.interval_ms = interval_ms
        self.look_back = max(settings.look_back, HAR_HISTORY)
        self._horizons = resolve(settings, interval_ms)
        self.inputs = LstmInputs(settings, features, interval_ms, self._horizons)
        self.features = self.inputs.features
        # Per target, how much of the network's correction is used (fitted on the validation
        # part: where the network does not beat the base there, it is scaled down); ones = all.
        self.shrink = np.ones(len(self._horizons.targets))
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

    # What tests and the training report read of the inputs, under the names they had on the model.
    @property
    def har(self) -> Har:
        return self.inputs.har

    @property
    def columns(self) -> tuple[str, ...]:
        return self.inputs.columns

    @property
    def static_names(self) -> tuple[str, ...]:
        return self.inputs.static_names

    @property
    def bar_features(self) -> tuple[Feature, ...]:
        return self.inputs.bar_features

    @property
    def dropped_columns(self) -> tuple[str, ...]:
        return self.inputs.dropped_columns

    @property
    def dropped_static(self) -> tuple[str, ...]:
        return self.inputs.dropped_static

    @property
    def symbol_means(self) -> dict[str, float]:
        return self.inputs.symbol_means

    def fit_model(
        self, frames: Sequence[tuple[str, BarFrame]], training: TrainingSettings, progress: Progress
    ) -> dict[str, float]:
        self.inputs.har.fit(frames)
        self.inputs.fit_hour(frames)
        self.inputs.fit_normalisation(frames)
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
                x, s, har = self.inputs.at(batch, [key], sel, fitted=frame)
                y = np.log1p(window_sums(np.maximum(frame.volume, 0.0), sel, targets))
                parts["x" + name].append(x)
                parts["s" + name].append(s)
                parts["y" + name].append((y - har[0]).astype(np.float32))
        if not parts["xt"]:
            raise ValueError(f"not enough bars to train: need more than {self.look_back} per symbol")
        xt, st, yt = (torch.from_numpy(np.concatenate(parts[k])) for k in ("xt", "st", "yt"))
        xv, sv, yv = (torch.from_numpy(np.concatenate(parts[k])) for k in ("xv", "sv", "yv"))
        n_targets = len(targets)
        loss_of = target_loss(self.settings.quantiles, n_targets, yt)

        # The feature pipeline above is shared; each member then trains alone from its own seed
        # (init and batch order), so averaging them cuts the seed-to-seed variance.
        members, epochs_run = [], 0
        for k in range(self.settings.members):
            member, epochs = train_member(
                self._new_member, training, training.seed + k, (xt, st, yt), (xv, sv, yv), loss_of, progress
            )
            members.append(member)
            epochs_run += epochs
        self.net = MemberAverage(members)
        self.net.eval()
        if n_targets > 1:
            self._fit_shrink(xv, sv, yv)
        val = eval_loss(self.net, xv, sv, yv, loss_of)
        return {"val_loss": val, "epochs_run": float(epochs_run), "train_samples": float(len(yt))}

    def _fit_shrink(self, x: torch.Tensor, s: torch.Tensor, y: torch.Tensor) -> None:
        """Per target, the share of the network's mean correction that fits the validation part
        best (least squares, within 0..1); the quantiles move with the mean."""
        with torch.inference_mode():
            out = torch.cat([self.net(x[lo : lo + CHUNK], s[lo : lo + CHUNK]) for lo in range(0, len(y), CHUNK)])
        c = out.view(len(y), len(self.shrink), -1)[..., 0].numpy().astype(np.float64)
        r = y.numpy().astype(np.float64)
        cc = (c * c).sum(axis=0)
        self.shrink = np.where(cc > 0, np.clip((c * r).sum(axis=0) / np.where(cc > 0, cc, 1.0), 0.0, 1.0), 1.0)

    def fit(self, frames: Sequence[tuple[str, BarFrame]]) -> None:
        self.fit_model(frames, TrainingSettings(), quiet)

    def fitted_points(self, key: str, frame: BarFrame, positions: IntArray) -> tuple[FloatArray, FloatArray]:
        """``(lstm, har)`` point forecasts (P,) at positions of a frame the model was fitted on."""
        batch = Batch.stack([frame])
        points, hars = [], []
        self.net.eval()
        for lo in range(0, len(positions), CHUNK):
            pos = positions[lo : lo + CHUNK]
            x, s, har = self.inputs.at(batch, [key], pos, fitted=frame)
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
        step = max(1, CHUNK // s_count)
        for lo in range(0, p_count, step):
            pos = positions[lo : lo + step]
            x, s, har = self.inputs.at(batch, keys, pos)
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
        z = self.inputs.normalised(recent, keys)[:, 1:].astype(np.float32)
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
        static, har = self.inputs.statics(batch, keys, positions)
        out = np.empty((len(keys), len(self._horizons.targets) * (1 + len(self.settings.quantiles))),
                       dtype=np.float32)
        reuse = np.flatnonzero(hit)
        fresh = np.flatnonzero(~hit)
        self.net.eval()
        with torch.inference_mode():
            if len(reuse):
                # The newest bar's columns need the bar before it too (its return).
                last = self.inputs.normalised(batch.bars_from(n - 2).rows(reuse),
                                              [keys[i] for i in reuse.tolist()])[:, -1:]
                states = [state.rows(torch.from_numpy(rows[reuse])) for state in prefix.states]
                out[reuse] = self.net.resume(states, torch.from_numpy(last.astype(np.float32)),
                                             torch.from_numpy(static[reuse])).numpy()
            if len(fresh):
                # Only the bars the windows read (and the one before, for the first return).
                recent = batch.bars_from(n - lb - 1).rows(fresh)
                windows = self.inputs.windows(recent, [keys[i] for i in fresh.tolist()], np.array([lb + 1]))
                out[fresh] = self.net(torch.from_numpy(windows), torch.from_numpy(static[fresh])).numpy()
        self.prefix_hits += len(reuse)
        self.prefix_misses += len(fresh)
        points, quants = self._outputs(out.astype(np.float64), har)
        return points, quants if len(self.settings.quantiles) else None

    # -- artifact parts --
    def tensors(self) -> dict[str, npt.NDArray[Any]]:
        inputs = self.inputs
        out = {f"net.{k}": v.detach().numpy().copy() for k, v in self.net.state_dict().items()}
        har_tensors, _ = inputs.har.state()
        out.update(har_tensors)
        if self._horizons.multi:
            out["shrink"] = self.shrink.astype(np.float64)
            if inputs.hour is not None and len(inputs.hour_coef):
                out["hour.coef"] = inputs.hour_coef.astype(np.float64)
                out["hour.global_profile"] = inputs.hour.global_profile.astype(np.float64)
                out["hour.profiles"] = np.stack([inputs.hour.profiles[k] for k in sorted(inputs.hour.profiles)])
        return out

    def meta(self) -> dict[str, Any]:
        inputs = self.inputs
        _, har_meta = inputs.har.state()
        return {
            "features": list(self.features),
            "columns": list(inputs.columns),
            "static": list(inputs.static_names),
            "interval_ms": self.interval_ms,
            "horizons": {"bars": self._horizons.bars, "sums": [list(s) for s in self._horizons.sums]},
            "normalisation": {
                "column_mean": inputs.col_mean.tolist(),
                "column_std": inputs.col_std.tolist(),
                "static_mean": inputs.static_mean.tolist(),
                "static_std": inputs.static_std.tolist(),
                "dropped_columns": list(inputs.dropped_columns),
                "dropped_static": list(inputs.dropped_static),
                "min_spread": MIN_SPREAD,
                "input_clip": INPUT_CLIP,
                "symbol_log_volume_mean": inputs.symbol_means,
                "global_log_volume_mean": inputs.global_mean,
            },
            "har": har_meta,
            **({"hour_profile_keys": sorted(inputs.hour.profiles)} if inputs.hour is not None and len(inputs.hour_coef)
               else {}),
        }

    @classmethod
    def from_parts(
        cls, settings: ModelSettings, tensors: dict[str, npt.NDArray[Any]], meta: dict[str, Any]
    ) -> LstmModel:
        model = cls(settings, meta["features"], int(meta["interval_ms"]))
        inputs = model.inputs
        # An artifact from before horizons forecasts the next bar only.
        recorded = meta.get("horizons", {"bars": 1, "sums": []})
        trained = Horizons(int(recorded["bars"]), tuple((str(lb), int(k)) for lb, k in recorded["sums"]))
        if trained != model.horizon_spec:
            raise ValueError(
                f"trained for {_describe(trained)}, the running settings ask for {_describe(model.horizon_spec)}: "
                "retrain it (volcast train), or set model.horizons and model.horizon_sums to what it was "
                "trained for (a model from before horizons: horizons 1, horizon_sums [])")
        if list(meta.get("columns", [])) != list(inputs.columns):
            raise ValueError(f"per-bar columns {meta.get('columns')} are not this volcast's {list(inputs.columns)}")
        if list(meta.get("static", [])) != list(inputs.static_names):
            raise ValueError(f"static inputs {meta.get('static')} are not this volcast's {list(inputs.static_names)}")
        norm = meta["normalisation"]
        inputs.col_mean = np.asarray(norm["column_mean"], dtype=np.float64)
        inputs.col_std = np.asarray(norm["column_std"], dtype=np.float64)
        inputs.static_mean = np.asarray(norm["static_mean"], dtype=np.float64)
        inputs.static_std = np.asarray(norm["static_std"], dtype=np.float64)
        if inputs.col_mean.shape != (len(inputs.columns),) or inputs.static_mean.shape != (len(inputs.static_names),):
            raise ValueError("normalisation statistics do not match the features")
        inputs.set_scales(norm.get("dropped_columns"), norm.get("dropped_static"))
        inputs.symbol_means = {str(k): float(v) for k, v in norm["symbol_log_volume_mean"].items()}
        inputs.global_mean = float(norm["global_log_volume_mean"])
        inputs.har = Har.from_state(tensors, meta["har"])
        if inputs.har.coef.shape != (len(HAR_NAMES) + 1,):
            raise ValueError(f"HAR coefficients have shape {inputs.har.coef.shape}")
        if trained.multi and (inputs.har.horizon_targets != trained.targets
                              or inputs.har.target_coef.shape != (len(trained.targets), len(HAR_NAMES) + 1)):
            raise ValueError(f"HAR's direct coefficients {inputs.har.target_coef.shape} do not fit "
                             f"{_describe(trained)}")
        if trained.multi:
            model.shrink = np.asarray(tensors["shrink"], dtype=np.float64)
            if model.shrink.shape != (len(trained.targets),):
                raise ValueError(f"shrink has shape {model.shrink.shape}")
            if inputs.hour is not None and "hour.coef" in tensors:
                inputs.hour_coef = np.asarray(tensors["hour.coef"], dtype=np.float64)
                inputs.hour.global_profile = np.asarray(tensors["hour.global_profile"], dtype=np.float64)
                inputs.hour.profiles = {str(k): np.asarray(row, dtype=np.float64)
                                       for k, row in zip(meta["hour_profile_keys"], tensors["hour.profiles"],
                                                         strict=True)}
                if inputs.hour_coef.shape != (len(trained.targets), 2):
                    raise ValueError(f"hour coefficients have shape {inputs.hour_coef.shape}")
        state = {k.removeprefix("net."): torch.from_numpy(v.copy()) for k, v in tensors.items() if k.startswith("net.")}
        model.net.load_state_dict(state, strict=True)
        model.net.eval()
        return model


def _describe(horizons: Horizons) -> str:
    sums = ", ".join(label for label, _ in horizons.sums)
    return f"{horizons.bars} horizon(s)" + (f" and sums over {sums}" if sums else "")
