"""``train_model``: frames in, a trained model out, ready to be saved as an artifact.

Training refuses what cannot give a sane model. Bars with values that cannot be real (NaN,
infinities, negative volumes or prices) are cleaned first (``clean_frame``). A frame shorter than
``min_training_bars`` is left out (listed in meta.json as ``left_out``), and with none long enough
training is refused with a message naming the minimum: the lstm reads each bar against the feed's
time-of-day profile, which needs every minute of the day seen once plus one look_back of bars
seen twice (11 h of bars gave a model whose inputs had no spread, forecasting 1.4e28 a day later).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from forecaster.artifact import read_artifact, write_artifact
from forecaster.baselines import LogForecaster
from forecaster.ensemble_model import EnsembleModel
from forecaster.estimator import build_untrained, cap_frames, effective_features
from forecaster.features import slots_per_day
from forecaster.frame import BarFrame, FloatArray
from forecaster.lstm_model import LstmModel
from forecaster.seed_model import SeedModel
from forecaster.training_loop import Progress, print_progress
from volcast.settings import ModelSettings, TrainingSettings


@dataclass
class TrainedModel:
    """A fitted model with what its artifact records about it."""

    model: LogForecaster
    settings: ModelSettings
    training: TrainingSettings
    span: dict[str, list[int]] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    version: str = "unsaved"
    left_out: dict[str, int] = field(default_factory=dict)  # frames too short to train on: key -> bars

    def save(self, directory: Path, version: str) -> Path:
        """Write the artifact (weights + meta.json) into ``directory``."""
        model = self.model
        tensors, extra = _parts(model)
        meta: dict[str, Any] = {
            "name": self.settings.name,
            "version": version,
            "model": self.settings.model_dump(mode="json"),
            "training": self.training.model_dump(mode="json"),
            "training_span": self.span,
            "left_out": self.left_out,
            "scores": self.scores,
            **extra,
        }
        self.version = version
        return write_artifact(directory, tensors, meta)


def _parts(model: LogForecaster) -> tuple[dict[str, Any], dict[str, Any]]:
    if isinstance(model, EnsembleModel):
        tensors = model.lstm.tensors()
        return tensors, {**model.lstm.meta(), "ensemble_weight": model.weight}
    if isinstance(model, LstmModel | SeedModel):
        return model.tensors(), model.meta()
    raise TypeError(f"cannot save a {type(model).__name__}")


def load_model(directory: Path, settings: ModelSettings) -> tuple[LogForecaster, dict[str, Any]]:
    """Rebuild a model from a verified artifact; ArtifactError when it cannot be used."""
    from forecaster.artifact import ArtifactError

    tensors, meta = read_artifact(directory, settings)
    try:
        model: LogForecaster
        if settings.name == "seed":
            model = SeedModel.from_parts(settings, tensors, meta)
        else:
            lstm = LstmModel.from_parts(settings, tensors, meta)
            model = EnsembleModel(lstm, float(meta["ensemble_weight"])) if settings.name == "ensemble" else lstm
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise ArtifactError(f"{directory}: weights or meta do not fit the model: {exc}") from None
    return model, meta


def min_training_bars(model: ModelSettings, interval_ms: int) -> int:
    """Fewest bars of one frame that ``train_model`` trains on: for the lstm and ensemble a day of
    bars (each slot of the time-of-day profile seen) plus look_back; for seed, look_back + 1."""
    if model.name == "seed":
        return model.look_back + 1
    return slots_per_day(interval_ms) + model.look_back


def _clean(values: FloatArray) -> FloatArray:
    return np.where(np.isfinite(values) & (values > 0.0), values, 0.0)


def clean_frame(frame: BarFrame) -> BarFrame:
    """``frame`` with values that cannot be real made harmless: a volume, trade count or buy volume
    that is not finite or is negative counts as none (as the streamer keeps such trades out of bars);
    a price that is not finite or not positive is the last good close before it (the first good
    one at the start, 1.0 when there is none)."""
    columns = (frame.volume, frame.trades, frame.buy_volume, frame.open, frame.high, frame.low, frame.close)
    if all(np.isfinite(c).all() and (c >= 0).all() for c in columns[:3]) and \
            all(np.isfinite(c).all() and (c > 0).all() for c in columns[3:]):
        return frame
    close = frame.close
    good = np.isfinite(close) & (close > 0)
    if not good.any():
        carried = np.ones(len(close))
    else:
        index = np.where(good, np.arange(len(close)), -1)
        np.maximum.accumulate(index, out=index)
        carried = close[np.where(index >= 0, index, int(np.argmax(good)))]

    def price(values: FloatArray) -> FloatArray:
        return np.where(np.isfinite(values) & (values > 0), values, carried)

    return replace(frame, volume=_clean(frame.volume), trades=_clean(frame.trades),
                   buy_volume=_clean(frame.buy_volume), open=price(frame.open), high=price(frame.high),
                   low=price(frame.low), close=price(frame.close))


def train_model(
    frames: Sequence[tuple[str, BarFrame]],
    model: ModelSettings,
    training: TrainingSettings,
    progress: Progress = print_progress,
) -> TrainedModel:
    """Train ``model.name`` on every frame (one global model across symbols, keyed by feed key).

    ValueError when no frame has ``min_training_bars``; shorter frames are left out.
    """
    if not frames:
        raise ValueError("no bars to train on")
    torch.set_num_threads(training.threads)
    frames = [(key, clean_frame(frame)) for key, frame in cap_frames(frames, training.max_bars)]
    interval = frames[0][1].interval_ms
    if any(f.interval_ms != interval for _, f in frames):
        raise ValueError("all frames must have the same bar interval")
    least = min_training_bars(model, interval)
    left_out = {key: len(f) for key, f in frames if len(f) < least}
    frames = [(key, f) for key, f in frames if len(f) >= least]
    if not frames:
        raise ValueError(
            f"too little data to train {model.name}: it needs at least {least} bars of one feed "
            f"({'look_back + 1' if model.name == 'seed' else 'a day of bars plus look_back'}), "
            f"the longest has {max(left_out.values())}")
    started = time.perf_counter()
    estimator = build_untrained(model, effective_features(model, frames), interval)
    if isinstance(estimator, EnsembleModel):
        scores = estimator.lstm.fit_model(frames, training, progress)
        scores["ensemble_weight"] = estimator.fit_weight(frames, training.validation_fraction)
    elif isinstance(estimator, LstmModel | SeedModel):
        scores = estimator.fit_model(frames, training, progress)
    else:
        raise TypeError(type(estimator).__name__)
    scores["train_seconds"] = time.perf_counter() - started
    span = {key: [int(f.open_time_ms[0]), f.end_ms] for key, f in frames}
    return TrainedModel(estimator, model, training, span, scores, left_out=left_out)
