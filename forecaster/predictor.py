"""The interface the inference and refit workers use: ``Predictor``, ``load_predictor``,
``baseline_predictor``.

A predictor takes the latest bars of many symbols and forecasts the next bar of each in ONE
batched pass (features with numpy over the batch, one forward of the network).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from forecaster.artifact import ArtifactError
from forecaster.baselines import BASELINE_NAMES, Har, LogForecaster, make_baseline
from forecaster.features import Batch
from forecaster.frame import BarFrame, FloatArray, IntArray
from forecaster.guard import (
    MAX_LOG,
    log_bounds,
    naive_volumes,
    passing_log,
    passing_targets_log,
    reason_log,
    target_log_bounds,
    target_reason_log,
)
from forecaster.horizon_block import HORIZON_DIGITS, HorizonBlock, round_significant
from forecaster.horizons import Horizons
from forecaster.payload import HorizonValues
from volcast.settings import ModelSettings

__all__ = [
    "HORIZON_DIGITS",
    "ArtifactError",
    "Forecast",
    "ModelPredictor",
    "Predictor",
    "baseline_predictor",
    "load_predictor",
    "round_significant",
]


@dataclass(frozen=True, slots=True)
class Forecast:
    volume: float  # point forecast of the next bar's volume (base asset)
    quantiles: dict[float, float]  # e.g. {0.1: v, 0.5: v, 0.9: v}; empty if the model has none
    # Set when the model's own forecast failed the output guard (forecaster/guard.py): why, and
    # the values are then the naive forecast on the same window, without quantiles.
    guard: str | None = None
    # Every horizon and cumulative window (forecaster/horizons.py) from the same forward pass;
    # None for a model of the next bar only, and for a guarded forecast.
    horizons: HorizonValues | None = None
    # The output guard's bound on this forecast (volume; inf when unknown): the calibrated band
    # (forecaster/calibration.py) is widened only up to it.
    bound: float = math.inf


@runtime_checkable
class Predictor(Protocol):
    name: str  # "lstm", "seed", "ensemble", or a baseline name "har", "naive"...
    version: str  # artifact version; baselines "baseline"
    look_back: int  # bars of history needed (most recent last)

    def predict(self, histories: Sequence[tuple[str, BarFrame]]) -> list[Forecast]:
        """(feed_key, frame of the latest >= look_back bars) per symbol -> one forecast each."""
        ...

    def history_length(self, available: int) -> int | None:
        """Bars to give ``predict_batch`` for a history of ``available`` bars (None: too short)."""
        ...

    def predict_batch(self, batch: Batch, keys: Sequence[str]) -> list[Forecast]:
        """The same as ``predict`` on histories already stacked (``history_length`` bars each)."""
        ...

    @property
    def prepare_bars(self) -> int:
        """Bars per history that ``prepare`` reads; 0: nothing to prepare."""
        ...

    def prepare(self, batch: Batch, keys: Sequence[str]) -> None:
        """Between boundaries: compute ahead what ``predict_batch`` of each history's next bar can
        reuse (``batch``: ``prepare_bars`` bars or more each). It changes no forecast, only its speed."""
        ...

    def prepared_counts(self) -> tuple[int, int]:
        """(forecasts that reused what ``prepare`` computed, forecasts that read whole windows)."""
        ...


class ModelPredictor:
    """A Predictor over any fitted ``LogForecaster`` (network or baseline)."""

    def __init__(self, model: LogForecaster, name: str, version: str, *, fit_on_predict: bool = False) -> None:
        self.model = model
        self.name = name
        self.version = version
        self.look_back = model.look_back
        # Baselines without a fit (no model yet) fit once on the first histories they see.
        self._fit_on_predict = fit_on_predict

    def history_length(self, available: int) -> int | None:
        # Baselines use what there is, up to their look_back; a network needs exactly its look_back.
        if available < 1:
            return None
        if self.name in BASELINE_NAMES:
            return min(available, self.look_back)
        return self.look_back if available >= self.look_back else None

    def predict(self, histories: Sequence[tuple[str, BarFrame]]) -> list[Forecast]:
        if not histories:
            return []
        if self._fit_on_predict:
            self.model.fit(histories)
            self._fit_on_predict = False
        frames = [f for _, f in histories]
        shortest = min(len(f) for f in frames)
        length = self.history_length(shortest)
        if length is None:
            short = [k for k, f in histories if self.history_length(len(f)) is None]
            raise ValueError(f"{self.name} needs {self.look_back} bars of history; too few for {short[:5]}")
        return self.predict_batch(Batch.stack(frames, length), [k for k, _ in histories])

    def predict_batch(self, batch: Batch, keys: Sequence[str]) -> list[Forecast]:
        if not keys:
            return []
        if self._fit_on_predict:
            raise ValueError(f"{self.name} is not fitted: call predict with frames first")
        positions = np.array([batch.volume.shape[1]], dtype=np.int64)
        spec = self.model.horizon_spec
        if spec.multi:
            # One forward pass: the next bar is the first target.
            point, quants = self.model.predict_targets(batch, keys, positions)
            point, quants = point[:, 0], None if quants is None else quants[:, 0]
            return forecasts_from_log(point[:, 0], None if quants is None else quants[:, 0],
                                      self.model.quantile_levels, batch.log_volume, batch.volume,
                                      (point, quants, spec))
        point, quants = self.model.predict_log(batch, keys, positions)
        return forecasts_from_log(point[:, 0], None if quants is None else quants[:, 0], self.model.quantile_levels,
                                  batch.log_volume, batch.volume)

    @property
    def prepare_bars(self) -> int:
        return self.model.prepare_bars

    def prepare(self, batch: Batch, keys: Sequence[str]) -> None:
        if keys:
            self.model.prepare_next(batch, keys)

    def prepared_counts(self) -> tuple[int, int]:
        return self.model.prepared_counts()

    def forecast_positions(
        self, key: str, frame: BarFrame, positions: IntArray
    ) -> tuple[FloatArray, FloatArray | None]:
        """Volumes (P,) and quantiles (P, Q) at target positions of a whole frame (backtests)."""
        point, quants = self.model.predict_log(Batch.stack([frame]), [key], positions)
        # Unguarded (the refit worker checks these against the guard's bound), but never an
        # overflow: a log forecast past MAX_LOG is a huge finite volume, NaN stays NaN.
        volume = np.expm1(np.minimum(point[0], MAX_LOG))
        return volume, None if quants is None else np.expm1(np.minimum(quants[0], MAX_LOG))


HorizonArrays = tuple[FloatArray, FloatArray | None, Horizons]
"""A batch's log1p forecasts of every target (N, T), their quantiles (N, T, Q), and what the
targets are."""


def _horizon_values(point: FloatArray, quants: FloatArray | None, spec: Horizons,
                    levels: Sequence[float]) -> list[HorizonValues]:
    """Each row's payload horizons from log1p ``point`` (N, T) and ``quants`` (N, T, Q) (passed
    by the guard: clamped only against an overflow): rows of one ``HorizonBlock``, whose values
    stay in its arrays and whose JSON it writes for all rows at once (forecaster/horizon_block.py)."""
    volume = round_significant(np.maximum(np.expm1(np.minimum(point, MAX_LOG)), 0.0))
    qv = None
    if quants is not None and len(levels):
        # (N, Q, T): each level's values of a row are one row.
        qv = round_significant(np.maximum(np.expm1(np.minimum(quants, MAX_LOG)), 0.0)).transpose(0, 2, 1)
    return HorizonBlock(volume, qv, levels, spec).rows()


def forecasts_from_log(
    point: FloatArray, quants: FloatArray | None, levels: Sequence[float], log_window: FloatArray,
    window: FloatArray, horizons: HorizonArrays | None = None,
) -> list[Forecast]:
    """Forecasts of a batch from log1p values ``point`` (N,) and ``quants`` (N, Q), guarded against
    the bound of each history's log1p volumes ``log_window`` (N, bars): a failing row is the naive
    forecast on the same volumes ``window``, marked with the reason (forecaster/guard.py).
    ``horizons``: every target of the same rows, each guarded too (a failing one fails the row)."""
    # Checked in log space, before expm1, where the models work (and the bars' log volumes are
    # stored): NaN and inf fail the comparisons.
    log_bound = log_bounds(log_window)
    ok = passing_log(point, quants, log_bound)
    target_ok = None
    if horizons is not None:
        h_point, h_quants, spec = horizons
        target_bound = target_log_bounds(log_bound, [k for _, k in spec.targets])
        target_ok = passing_targets_log(h_point, h_quants, target_bound)
    # Clamped in log space: expm1 overflows past about 709.78 (a model fed inputs it never saw
    # in training forecast 1.4e28 and inf); such a value is above the bound anyway.
    volume = np.maximum(np.expm1(np.minimum(point, MAX_LOG)), 0.0)
    quantile = None if quants is None else np.maximum(np.expm1(np.minimum(quants, MAX_LOG)), 0.0)
    volumes = volume.tolist()
    qs = [float(q) for q in levels]
    values: list[HorizonValues | None] = [None] * len(volumes) if horizons is None else \
        list(_horizon_values(horizons[0], horizons[1], horizons[2], levels))
    # Python floats from tolist: element by element from numpy took 2 ms per 1000 forecasts.
    if quantile is None:
        out = [Forecast(v, {}, None, h) for v, h in zip(volumes, values, strict=True)]
    else:
        rows = quantile.tolist()
        limits = np.expm1(np.minimum(log_bound, MAX_LOG)).tolist()
        out = [Forecast(v, dict(zip(qs, row, strict=True)), None, h, b)
               for v, row, h, b in zip(volumes, rows, values, limits, strict=True)]
    bad = ~ok if target_ok is None else ~(ok & target_ok)
    if bad.any():
        naive = naive_volumes(window)
        for i in np.flatnonzero(bad).tolist():
            if not ok[i]:
                why = reason_log(float(point[i]), [] if quants is None else quants[i].tolist(), float(log_bound[i]))
            else:
                assert horizons is not None
                h_quant = None if horizons[1] is None else horizons[1][i].tolist()
                why = target_reason_log(horizons[0][i].tolist(), h_quant, target_bound[i].tolist())
            out[i] = Forecast(float(naive[i]), {}, why)
    return out


def load_predictor(artifact_dir: Path, model: ModelSettings) -> ModelPredictor:
    """The model saved in ``artifact_dir``; ArtifactError if corrupt or not matching ``model``."""
    from forecaster.training import load_model

    fitted, meta = load_model(Path(artifact_dir), model)
    return ModelPredictor(fitted, model.name, str(meta.get("version", "unknown")))


def baseline_predictor(name: str = "har", fitted: LogForecaster | None = None) -> ModelPredictor:
    """A baseline for "no model yet": ``fitted`` if given, else fitted on the first histories passed."""
    model = fitted if fitted is not None else make_baseline(name)
    needs_fit = fitted is None and name in ("har", "ewma")
    if isinstance(model, Har) and model.fitted:
        needs_fit = False
    return ModelPredictor(model, name, "baseline", fit_on_predict=needs_fit)
