"""Scores per horizon and per cumulative window (``volcast backtest --horizons``,
``benchmarks/accuracy.py --horizons``).

Every forecast made at position ``p`` sees only bars ``< p`` (each model's ``predict_targets``
reads the bars before its positions, as ``forecaster/scoring.py``'s one-step scores do), and is
scored on the target windows from ``p`` on; positions whose farthest window runs past the frame
are left out, so every target of every model is scored on the same forecast positions.

Per target: ``rmse_log`` (RMSE of log1p volume, the window's volume for a sum), ``mase`` (MAE
over the naive forecast's MAE on the same windows: the last bar's volume per bar of the window)
and ``coverage_80`` (share of windows inside the 0.1-0.9 quantiles) where the model has them,
with ``coverage_80_calibrated``: inside the band as the worker publishes it, calibrated online
per target (forecaster/calibration.py ``replay_targets``: run through each frame's positions in
time order, a target learnt only once its window has closed, from a fresh state at the test
range's start; each window with its own step, calibration.WINDOW_POWER), with the band's mean
width and interval score (log1p) raw and calibrated.
For each sum whose window lies within the per-bar horizons, ``sum_of_bars_rmse_log`` also scores
the sum of the per-bar forecasts' volumes, the alternative to a dedicated head.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from forecaster.baselines import Har, LogForecaster, TimeOfDay, naive_targets
from forecaster.calibration import WINDOW_POWER, BoolArray, replay_targets
from forecaster.features import Batch
from forecaster.frame import BarFrame, FloatArray, IntArray
from forecaster.horizons import Horizons, Target, window_sums

TargetForecast = Callable[[Batch, Sequence[str], IntArray], tuple[FloatArray, FloatArray | None]]
"""(batch, keys, positions) -> log1p forecasts (S, P, T) and quantiles (S, P, T, Q) or None."""
_CHUNK = 2048


def baseline_forecasts(spec: Horizons, train: Sequence[tuple[str, BarFrame]]) -> dict[str, TargetForecast]:
    """naive, tod (the time-of-day profile over the past week) and HAR direct (fitted on
    ``train``), each forecasting ``spec``'s targets."""
    targets = spec.targets
    har = Har(interval_ms=train[0][1].interval_ms, horizon_targets=targets)
    har.fit(train)
    tod = TimeOfDay(train[0][1].interval_ms)

    def naive(batch: Batch, keys: Sequence[str], positions: IntArray) -> tuple[FloatArray, FloatArray | None]:
        return naive_targets(batch, positions, targets), None

    def profile(batch: Batch, keys: Sequence[str], positions: IntArray) -> tuple[FloatArray, FloatArray | None]:
        return tod.targets_of(batch, keys, positions, targets), None

    def direct(batch: Batch, keys: Sequence[str], positions: IntArray) -> tuple[FloatArray, FloatArray | None]:
        if len(targets) == 1:
            point, _ = har.predict_log(batch, keys, positions)
            return point[..., None], None
        return har.predict_targets(batch, keys, positions)

    return {"naive": naive, "tod": profile, "har": direct}


def model_forecast(model: LogForecaster) -> TargetForecast:
    return model.predict_targets


def scoring_positions(frame: BarFrame, test_range: tuple[int, int], spec: Horizons, history: int) -> IntArray:
    """Forecast positions of the test range whose every target window lies in the frame."""
    start, stop = test_range
    return np.arange(max(start, history, 1), min(stop, len(frame)) - spec.span + 1, dtype=np.int64)


def target_forecasts(forecast: TargetForecast, batch: Batch, key: str, positions: IntArray,
                     levels: Sequence[float]) -> tuple[FloatArray, tuple[FloatArray, FloatArray, FloatArray] | None]:
    """One series' log1p forecasts ``(P, T)`` at ``positions`` (in chunks), and its band: the
    0.1, 0.5 and 0.9 quantiles ``(low, mid, high)``, each ``(P, T)``, where the forecast has them
    and ``levels`` names all three (else None)."""
    banded = 0.1 in levels and 0.5 in levels and 0.9 in levels
    points, lows, mids, highs = [], [], [], []
    for lo in range(0, len(positions), _CHUNK):
        point, quants = forecast(batch, [key], positions[lo : lo + _CHUNK])
        points.append(point[0])
        if quants is not None and banded:
            lows.append(quants[0, :, :, list(levels).index(0.1)])
            mids.append(quants[0, :, :, list(levels).index(0.5)])
            highs.append(quants[0, :, :, list(levels).index(0.9)])
    band = (np.concatenate(lows), np.concatenate(mids), np.concatenate(highs)) if mids else None
    return np.concatenate(points), band


def calibrated_bands(band: tuple[FloatArray, FloatArray, FloatArray], actual: FloatArray,
                     targets: Sequence[Target], window_power: float = WINDOW_POWER
                     ) -> tuple[FloatArray, FloatArray, BoolArray]:
    """The band as the worker publishes it at each of a series' consecutive positions (log1p
    ``(P, T)`` each, and whether calibrated): ``band`` (low, mid, high) calibrated online from
    the realised ``actual`` volumes, each target learnt only once its window has closed."""
    low, mid, high = band
    delays = np.array([o + k for o, k in targets], dtype=np.int64)
    windows = np.array([k for _, k in targets], dtype=np.int64)
    return replay_targets(low, high, mid, np.log1p(actual), delays, windows=windows, window_power=window_power)


def interval_score(low: FloatArray, high: FloatArray, actual: FloatArray) -> FloatArray:
    """Winkler score of an 80% band per target (log1p, lower is better): its width plus 10 x
    how far each realised value fell outside it (mean over the rows)."""
    miss = np.maximum(low - actual, 0.0) + np.maximum(actual - high, 0.0)
    return np.asarray(np.mean(high - low + miss / (1.0 - 0.8) * 2.0, axis=0))


def score_targets(forecast: TargetForecast, frames: Sequence[tuple[str, BarFrame]],
                  positions: Sequence[IntArray], spec: Horizons, levels: Sequence[float] = (),
                  *, calibrate: bool = True, window_powers: Sequence[float] = ()) -> dict[str, Any]:
    """Per-horizon and per-window scores of ``forecast`` over ``positions`` of each frame, pooled.
    ``window_powers``: also the calibrated band's coverage, width and interval score with each of
    these steps per window (calibration.WINDOW_POWER), under ``by_window_power``."""
    targets = spec.targets
    windows = np.array([k for _, k in targets], dtype=np.int64)
    powers = [WINDOW_POWER, *(p for p in window_powers if p != WINDOW_POWER)]
    alternatives: dict[float, list[tuple[FloatArray, FloatArray]]] = {p: [] for p in powers}
    bars = np.array([k for _, k in targets], dtype=np.float64)
    points, actuals, naives, lows, highs = [], [], [], [], []
    for (key, frame), pos in zip(frames, positions, strict=True):
        if len(pos) == 0:
            continue
        point, band = target_forecasts(forecast, Batch.stack([frame]), key, pos, levels)
        points.append(point)
        actuals.append(window_sums(np.maximum(frame.volume, 0.0), pos, targets))
        if band is not None:
            lows.append(band[0])
            highs.append(band[2])
            if calibrate:
                for power in powers if window_powers else powers[:1]:
                    cal_lo, cal_hi, _ = calibrated_bands(band, actuals[-1], targets, power)
                    alternatives[power].append((cal_lo, cal_hi))
        naives.append(np.maximum(frame.volume[pos - 1], 0.0)[:, None] * bars[None, :])
    if not actuals:
        raise ValueError("no forecast position in the test range has every horizon inside the bars")
    log_point = np.concatenate(points)
    actual = np.concatenate(actuals)
    naive = np.concatenate(naives)
    volume = np.maximum(np.expm1(np.minimum(log_point, 700.0)), 0.0)
    rmse = np.sqrt(np.mean((np.log1p(volume) - np.log1p(actual)) ** 2, axis=0))
    naive_mae = np.mean(np.abs(naive - actual), axis=0)
    mase = np.mean(np.abs(volume - actual), axis=0) / np.where(naive_mae > 0, naive_mae, np.nan)
    log_actual = np.log1p(actual)
    coverage = None
    if lows and len(lows) == len(points):
        lo_v = np.expm1(np.concatenate(lows))
        hi_v = np.expm1(np.concatenate(highs))
        coverage = np.mean((actual >= lo_v) & (actual <= hi_v), axis=0)
        width = np.mean(np.concatenate(highs) - np.concatenate(lows), axis=0)
        winkler = interval_score(np.concatenate(lows), np.concatenate(highs), log_actual)
    # Per window power: coverage, width and interval score of the calibrated band (log1p).
    by_power: dict[float, tuple[FloatArray, FloatArray, FloatArray]] = {}
    for power, bands in alternatives.items():
        if bands and len(bands) == len(actuals):
            cal_lo_log = np.concatenate([b[0] for b in bands])
            cal_hi_log = np.concatenate([b[1] for b in bands])
            inside = (actual >= np.expm1(cal_lo_log)) & (actual <= np.expm1(cal_hi_log))
            by_power[power] = (np.mean(inside, axis=0), np.mean(cal_hi_log - cal_lo_log, axis=0),
                             interval_score(cal_lo_log, cal_hi_log, log_actual))

    def cell(j: int) -> dict[str, Any]:
        out: dict[str, Any] = {"rmse_log": float(rmse[j]), "mase": float(mase[j])}
        if coverage is not None:
            out["coverage_80"] = float(coverage[j])
            out["band_width_log"] = float(width[j])
            out["interval_score_log"] = float(winkler[j])
        if WINDOW_POWER in by_power:
            cov, wid, score = by_power[WINDOW_POWER]
            out["coverage_80_calibrated"] = float(cov[j])
            out["band_width_log_calibrated"] = float(wid[j])
            out["interval_score_log_calibrated"] = float(score[j])
        if window_powers and len(by_power) > 1 and windows[j] > 1:  # a single bar's step is the same at any power
            out["by_window_power"] = {f"{p:g}": {"coverage_80": float(c[j]), "band_width_log": float(w[j]),
                                                 "interval_score_log": float(x[j])}
                                      for p, (c, w, x) in by_power.items()}
        return out

    result: dict[str, Any] = {
        "forecasts": len(actual),
        "horizons": [cell(h) for h in range(spec.bars)],
        "sums": {},
    }
    for i, (label, k) in enumerate(spec.sums):
        j = spec.bars + i
        result["sums"][label] = cell(j)
        if k <= spec.bars:
            summed = volume[:, :k].sum(axis=1)
            result["sums"][label]["sum_of_bars_rmse_log"] = float(
                np.sqrt(np.mean((np.log1p(summed) - np.log1p(actual[:, j])) ** 2)))
    return result


def ratios(model: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """rmse_log of ``model`` over ``reference``'s, per horizon and per window."""
    return {
        "horizons": [m["rmse_log"] / r["rmse_log"] for m, r in zip(model["horizons"], reference["horizons"],
                                                                     strict=True)],
        "sums": {label: model["sums"][label]["rmse_log"] / reference["sums"][label]["rmse_log"]
                 for label in model["sums"]},
    }
