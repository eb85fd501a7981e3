"""``EnsembleModel`` (``ensemble``): the LSTM and HAR blended in log space with a weight fitted on
validation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from forecaster.baselines import LogForecaster, fit_positions
from forecaster.features import Batch
from forecaster.frame import BarFrame, FloatArray, IntArray
from forecaster.horizons import Horizons, Target
from forecaster.lstm_model import LstmModel
from volcast.settings import TrainingSettings


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
