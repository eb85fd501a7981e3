"""Forecast scores: rmse_log, mae, mape, mase, coverage_80, over one-step-ahead test ranges.

With ``calibrate``, also the coverage of the band the live worker would have published: the
feed's band calibrator (forecaster/calibration.py) run through the test range in time order,
each bar's band made before its volume is learnt, starting fresh at the range's start (so its
warm-up is inside the range, as for a new feed live).

Used by ``volcast backtest`` and by the refit worker to compare challenger and champion on the
same bars. Every forecast at position ``p`` sees only bars ``< p``. ``out_of_bound`` counts the
forecasts that the live worker's output guard would have replaced (forecaster/guard.py): the
refit worker never promotes a model with any.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from forecaster.calibration import HIGH, LOW, replay
from forecaster.frame import BarFrame, FloatArray, IntArray
from forecaster.guard import passing, rolling_bounds
from forecaster.predictor import ModelPredictor, Predictor


def positions_for(frame: BarFrame, test_range: tuple[int, int] | slice, look_back: int) -> IntArray:
    """Target positions of a test range (row indices), dropping those without enough history."""
    if isinstance(test_range, slice):
        start, stop, _ = test_range.indices(len(frame))
    else:
        start, stop = test_range
    return np.arange(max(start, look_back, 1), min(stop, len(frame)), dtype=np.int64)


def forecast_range(
    predictor: Predictor, key: str, frame: BarFrame, positions: IntArray
) -> tuple[FloatArray, FloatArray | None]:
    """Volumes and quantiles at every position; one-step-ahead, only the past visible."""
    if isinstance(predictor, ModelPredictor):
        return predictor.forecast_positions(key, frame, positions)
    points = np.empty(len(positions))
    quants: list[list[float]] = []
    for i, p in enumerate(positions):
        fc = predictor.predict([(key, frame[max(0, int(p) - predictor.look_back) : int(p)])])[0]
        points[i] = fc.volume
        quants.append([fc.quantiles[q] for q in sorted(fc.quantiles)])
    return points, (np.array(quants) if quants and quants[0] else None)


def metrics(
    actual: FloatArray,
    predicted: FloatArray,
    naive: FloatArray,
    quantiles: FloatArray | None = None,
    levels: Sequence[float] = (),
) -> dict[str, float]:
    predicted = np.maximum(predicted, 0.0)
    err = predicted - actual
    mae = float(np.mean(np.abs(err)))
    naive_mae = float(np.mean(np.abs(naive - actual)))
    pos = actual > 0
    out = {
        "rmse_log": float(np.sqrt(np.mean((np.log1p(predicted) - np.log1p(actual)) ** 2))),
        "mae": mae,
        "mape": float(np.mean(np.abs(err[pos]) / actual[pos])) if pos.any() else float("nan"),
        "mase": mae / naive_mae if naive_mae > 0 else float("nan"),
    }
    if quantiles is not None and 0.1 in levels and 0.9 in levels:
        lo = quantiles[:, list(levels).index(0.1)]
        hi = quantiles[:, list(levels).index(0.9)]
        out["coverage_80"] = float(np.mean((actual >= lo) & (actual <= hi)))
        out["band_width_log"] = float(np.mean(np.log1p(np.maximum(hi, 0.0)) - np.log1p(np.maximum(lo, 0.0))))
    return out


def calibrated_band(quantiles: FloatArray, levels: Sequence[float], actual: FloatArray,
                    bound: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray] | None:
    """The published (low, high) of each bar of one series and whether it was calibrated (1.0)
    or still raw (0.0), from the raw ``quantiles`` (T, Q) at ``levels``; None without a
    0.1/0.5/0.9 band."""
    if not all(q in levels for q in (LOW, 0.5, HIGH)):
        return None
    at = list(levels)
    with np.errstate(invalid="ignore"):
        logs = np.log1p(np.maximum(quantiles, 0.0))
        low, high, calibrated = replay(logs[:, at.index(LOW)], logs[:, at.index(HIGH)], logs[:, at.index(0.5)],
                                       np.log1p(np.maximum(actual, 0.0)), np.log1p(np.maximum(bound, 0.0)))
    return np.expm1(low), np.expm1(high), calibrated.astype(np.float64)


def score(
    predictor: Predictor,
    frames: Sequence[tuple[str, BarFrame]],
    test_range: tuple[int, int] | slice,
    *,
    calibrate: bool = False,
) -> dict[str, float]:
    """Scores over ``test_range`` (row indices, the same for every frame) of all frames pooled.

    ``mase`` divides by the naive forecast's MAE (last bar's volume) over the same bars.
    ``calibrate``: also ``coverage_80_calibrated`` (the band as published live) and
    ``calibrated_share`` (bars past the calibrator's warm-up), per frame in time order.
    """
    actual, predicted, naive, qs = [], [], [], []
    published: list[tuple[FloatArray, FloatArray, FloatArray]] = []
    levels: tuple[float, ...] = ()
    if isinstance(predictor, ModelPredictor):
        levels = predictor.model.quantile_levels
    out_of_bound = 0
    for key, frame in frames:
        needed = predictor.model.min_history if isinstance(predictor, ModelPredictor) else predictor.look_back
        pos = positions_for(frame, test_range, needed)
        if len(pos) == 0:
            continue
        point, quants = forecast_range(predictor, key, frame, pos)
        # As the worker checks them: volumes below 0 become 0 first (NaN stays NaN).
        live = None if quants is None else np.maximum(quants, 0.0)
        bound = rolling_bounds(frame.volume, pos)
        out_of_bound += int((~passing(np.maximum(point, 0.0), live, bound)).sum())
        actual.append(frame.volume[pos])
        predicted.append(point)
        naive.append(frame.volume[pos - 1])
        if quants is not None:
            qs.append(quants)
            band = calibrated_band(quants, levels, frame.volume[pos], bound) if calibrate else None
            if band is not None:
                published.append(band)
    if not actual:
        raise ValueError("no bars to score in the test range")
    extra: dict[str, float] = {}
    if published and len(published) == len(actual):
        truth = np.concatenate(actual)
        low, high, calibrated = (np.concatenate(parts) for parts in zip(*published, strict=True))
        extra["coverage_80_calibrated"] = float(np.mean((truth >= low) & (truth <= high)))
        extra["calibrated_share"] = float(np.mean(calibrated))
        # The mean width of the published band in log1p volume: coverage bought by width shows here.
        extra["band_width_log_calibrated"] = float(np.mean(np.log1p(high) - np.log1p(low)))
    return {
        **metrics(
            np.concatenate(actual),
            np.concatenate(predicted),
            np.concatenate(naive),
            np.concatenate(qs) if len(qs) == len(actual) and qs else None,
            levels,
        ),
        "bars": float(sum(len(a) for a in actual)),
        "out_of_bound": float(out_of_bound),
        **extra,
    }
