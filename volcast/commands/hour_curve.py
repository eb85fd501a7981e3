"""``volcast backtest --plot-hour``: one forecast of the coming hour against what then traded.

The forecast a subscriber would have received at one moment of the test part: every coming bar's
volume with its 80% band as the worker publishes it, the cumulative windows' own forecasts
(5m, 15m, 1h: heads of their own, not sums of the bars), and HAR direct's forecast of the same
targets. The band is calibrated online as live (forecaster/calibration.py ``replay_targets``):
the model forecasts every position of the test part up to the chosen one, and each target is
learnt only once its window has closed before that moment, so nothing after it is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from forecaster.baselines import LogForecaster
from forecaster.features import Batch
from forecaster.frame import BarFrame, FloatArray
from forecaster.horizon_scoring import TargetForecast, calibrated_bands, scoring_positions, target_forecasts
from forecaster.horizons import Horizons, window_sums

_HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class HourCurve:
    """One forecast of every target made at ``position`` (the predicted bar's row), and what came.

    Per target (``spec.targets``: the coming bars, then the windows), as volumes: ``model``,
    its calibrated band ``low``/``high`` (NaN where the model has no band), ``har`` (HAR
    direct) and ``actual``; ``bars``: the volume of every bar from ``position`` to the farthest
    target's end, for the cumulative curve."""

    key: str
    name: str
    position: int
    open_time_ms: int
    interval_ms: int
    spec: Horizons
    model: FloatArray
    low: FloatArray
    high: FloatArray
    calibrated: bool
    har: FloatArray
    actual: FloatArray
    bars: FloatArray

    def as_dict(self) -> dict[str, Any]:
        labels = [f"+{h + 1}" for h in range(self.spec.bars)] + [label for label, _ in self.spec.sums]

        def rows(values: FloatArray) -> dict[str, float | None]:
            return {label: (None if np.isnan(v) else float(v)) for label, v in zip(labels, values, strict=True)}

        return {"file": self.key, "model": self.name,
                "at": datetime.fromtimestamp(self.open_time_ms / 1000, UTC).isoformat(),
                "open_time_ms": self.open_time_ms, "band_calibrated": self.calibrated,
                "forecast": rows(self.model), "low_80": rows(self.low), "high_80": rows(self.high),
                "har": rows(self.har), "actual": rows(self.actual)}


def parse_at(text: str) -> int:
    """``--at``: an ISO time, UTC unless it names its zone, as epoch ms."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"--at {text!r} is not a time: write it as 2023-02-27T14:00 (UTC)") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _iso(ms: int) -> str:
    """UTC, to the minute, or finer where the time is not on a minute."""
    moment = datetime.fromtimestamp(ms / 1000, UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="minutes" if ms % 60_000 == 0 else "auto")


def choose_position(frame: BarFrame, test_range: tuple[int, int], spec: Horizons, history: int,
                    at_ms: int | None) -> int:
    """The row whose bar is forecast: the bar opening at ``at_ms``, or by default the last whole
    UTC hour of the test part whose every target lies inside the bars."""
    positions = scoring_positions(frame, test_range, spec, history)
    if len(positions) == 0:
        raise ValueError("no moment of the test part has every target (the next hour) inside the bars: "
                         "give a longer bars file or a smaller --train-frac")
    opens = frame.open_time_ms
    if at_ms is None:
        on_hour = positions[opens[positions] % _HOUR_MS == 0]
        return int((on_hour if len(on_hour) else positions)[-1])
    first, last = int(opens[positions[0]]), int(opens[positions[-1]])
    row = int(np.searchsorted(opens, at_ms))
    if not first <= at_ms <= last:
        raise ValueError(f"--at {_iso(at_ms)} is outside the test part's forecast moments {_iso(first)} to "
                         f"{_iso(last)} UTC (every target must lie inside the bars): pick a time between them")
    if row >= len(frame) or int(opens[row]) != at_ms:
        raise ValueError(f"no bar opens at {_iso(at_ms)}: give a time on the bars' grid "
                         f"({frame.interval_ms // 1000} s) between {_iso(first)} and {_iso(last)} UTC")
    return row


def hour_curve(model: LogForecaster, name: str, har: TargetForecast, key: str, frame: BarFrame,
               test_range: tuple[int, int], position: int) -> HourCurve:
    """The forecast at ``position``, its band calibrated over the test part's earlier forecasts."""
    spec = model.horizon_spec
    targets = spec.targets
    batch = Batch.stack([frame])
    volumes = np.maximum(frame.volume, 0.0)
    positions = scoring_positions(frame, test_range, spec, model.min_history)
    positions = positions[positions <= position]
    log_points, band = target_forecasts(model.predict_targets, batch, key, positions, model.quantile_levels)
    low = high = np.full(len(targets), np.nan)
    calibrated = False
    if band is not None:
        # Positions are consecutive rows, and a row's target is learnt only once its window has
        # closed: only windows that closed before ``position`` are read.
        actual = window_sums(volumes, positions, targets)
        cal_lo, cal_hi, done = calibrated_bands(band, actual, targets)
        low, high, calibrated = _volume(cal_lo[-1]), _volume(cal_hi[-1]), bool(done[-1].all())
    har_point, _ = har(batch, [key], np.array([position], dtype=np.int64))
    return HourCurve(key=key, name=name, position=position, open_time_ms=int(frame.open_time_ms[position]),
                     interval_ms=frame.interval_ms, spec=spec, model=_volume(log_points[-1]), low=low, high=high,
                     calibrated=calibrated, har=_volume(har_point[0, 0]),
                     actual=window_sums(volumes, np.array([position], dtype=np.int64), targets)[0],
                     bars=volumes[position : position + spec.span].astype(np.float64))


def _volume(log1p_values: FloatArray) -> FloatArray:
    out: FloatArray = np.maximum(np.expm1(np.minimum(log1p_values, 700.0)), 0.0)
    return out


def summary_lines(curve: HourCurve) -> list[str]:
    """The curve as a table for the terminal: a few of the coming bars, then the windows."""
    spec = curve.spec
    picks = [h for h in (1, 2, 5, 15, 30, 60) if h <= spec.bars]
    rows: Sequence[tuple[str, int]] = [*((f"+{h}", h - 1) for h in picks),
                                       *((label, spec.bars + i) for i, (label, _) in enumerate(spec.sums))]
    band = "calibrated 80% band" if curve.calibrated else "80% band (calibration still warming up)"
    out = [f"forecast made at {_iso(curve.open_time_ms)} UTC ({curve.key}, {curve.name}; {band}):",
           f"{'target':<8} {'actual':>12} {curve.name:>12} {'low':>12} {'high':>12} {'har':>12}"]
    for label, j in rows:
        out.append(f"{label:<8} {curve.actual[j]:>12.5g} {curve.model[j]:>12.5g} {curve.low[j]:>12.5g} "
                   f"{curve.high[j]:>12.5g} {curve.har[j]:>12.5g}")
    return out


def plot_hour(path: Path, curve: HourCurve) -> None:
    """Two panels: every coming bar (forecast, band, HAR direct, actual), and the cumulative volume
    with each window's forecast and band at its end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = curve.spec
    step = np.timedelta64(curve.interval_ms, "ms")
    n = spec.bars
    # Bar edges: bar h spans [edges[h], edges[h + 1]); the forecasts' lines run through mid-bar.
    edges = np.datetime64(curve.open_time_ms, "ms") + step * np.arange(len(curve.bars) + 1)
    mids = edges[:n] + step / 2
    title = (f"{curve.key}: {curve.name}'s forecast of the next {n} bars made at {_iso(curve.open_time_ms)} UTC, "
             "against what traded")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7.5), sharex=True)
    if not np.isnan(curve.low[:n]).all():
        top.fill_between(edges[: n + 1], np.append(curve.low[:n], curve.low[n - 1]),
                         np.append(curve.high[:n], curve.high[n - 1]), color="tab:orange", alpha=0.25, step="post",
                         label="80% band" + (" (calibrated)" if curve.calibrated else ""))
    top.step(edges, np.append(curve.bars, curve.bars[-1]), where="post", color="black", lw=0.9, label="actual")
    top.plot(mids, curve.model[:n], color="tab:orange", lw=1.4, label=curve.name)
    top.plot(mids, curve.har[:n], color="tab:blue", lw=1.0, ls="--", label="HAR direct")
    top.set_yscale("symlog")
    top.set_ylabel("volume per bar (base asset)")
    top.legend(loc="upper left")
    ends = edges[1:]
    bottom.plot(ends, np.cumsum(curve.bars), color="black", lw=1.0, label="actual, cumulative")
    for i, (label, k) in enumerate(spec.sums):
        j = n + i
        at = ends[k - 1]
        if not np.isnan(curve.low[j]):  # a line, not an error bar: the mean may lie outside its band
            bottom.vlines([at], curve.low[j], curve.high[j], color="tab:orange", lw=3, alpha=0.4,
                          label="80% band" if i == 0 else None)
        bottom.plot([at], [curve.model[j]], "o", color="tab:orange", label=f"{curve.name}, window" if i == 0 else None)
        bottom.plot([at], [curve.har[j]], "s", color="tab:blue", mfc="none", label="HAR direct" if i == 0 else None)
        bottom.annotate(label, (at, curve.actual[j]), textcoords="offset points", xytext=(4, -12), fontsize=8)
    bottom.set_ylabel("volume since the forecast")
    bottom.legend(loc="upper left")
    fig.suptitle(title)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Title": title})
    plt.close(fig)
