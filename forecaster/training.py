"""``train_model``: frames in, a trained model out, ready to be saved as an artifact."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from forecaster.artifact import read_artifact, write_artifact
from forecaster.baselines import LogForecaster
from forecaster.estimator import (
    EnsembleModel,
    LstmModel,
    Progress,
    SeedModel,
    build_untrained,
    cap_frames,
    effective_features,
    print_progress,
)
from forecaster.frame import BarFrame
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


def train_model(
    frames: Sequence[tuple[str, BarFrame]],
    model: ModelSettings,
    training: TrainingSettings,
    progress: Progress = print_progress,
) -> TrainedModel:
    """Train ``model.name`` on every frame (one global model across symbols, keyed by feed key)."""
    if not frames:
        raise ValueError("no bars to train on")
    torch.set_num_threads(training.threads)
    frames = cap_frames(frames, training.max_bars)
    interval = frames[0][1].interval_ms
    if any(f.interval_ms != interval for _, f in frames):
        raise ValueError("all frames must have the same bar interval")
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
    return TrainedModel(estimator, model, training, span, scores)
