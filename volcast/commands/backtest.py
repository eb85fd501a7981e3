"""``volcast backtest``: train on the first part of bars files, forecast the rest one step ahead.

With several files (several symbols over the same dates), one model is trained on the first
part of every file and each file is scored on its rest; the market-wide inputs
(forecaster/market.py), when configured in ``model.features``, are computed across the files at
each bar open time, and the output says how many other files each one had them from.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from volcast.commands._model_config import (
    BarsFileError,
    add_model_config_argument,
    model_settings,
    read_frames,
)

if TYPE_CHECKING:  # imported where used: `volcast --help` does not load torch
    from forecaster.frame import BarFrame
    from forecaster.predictor import ModelPredictor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bars", type=Path, nargs="+", metavar="BARS",
                        help="bars CSV files (gzip or plain); several symbols: one model, each file scored")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", choices=("seed", "lstm", "ensemble"), default=None,
                       help="train this model on the first part (default: model.name from the config)")
    which.add_argument("--artifact", type=Path, default=None, metavar="DIR",
                       help="score a saved model instead of training one")
    parser.add_argument("--train-frac", type=float, default=0.7, help="share of bars to train on (default 0.7)")
    parser.add_argument("--epochs", type=int, default=None, help="override training.epochs")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--horizons", action="store_true",
                        help="also score every horizon and cumulative window (model.horizons) against naive, "
                             "the time-of-day profile and HAR direct (one regression per horizon)")
    parser.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                        help="plot actual vs forecast (80%% band) over the last day of the test part")
    parser.add_argument("--plot-hour", type=Path, default=None, metavar="FILE.png",
                        help="plot one forecast of every coming bar and window (model.horizons) against what "
                             "traded, with its calibrated 80%% band and HAR direct's (one BARS file)")
    parser.add_argument("--at", default=None, metavar="TIME",
                        help="with --plot-hour: when the forecast is made, the open time of the predicted bar "
                             "(UTC, e.g. 2023-02-27T14:00; default: the test part's last whole hour)")
    add_model_config_argument(parser)


def main(args: argparse.Namespace) -> int:
    from forecaster.artifact import ArtifactError
    from forecaster.baselines import BASELINE_NAMES, make_baseline
    from forecaster.market import attach_configured, describe
    from forecaster.predictor import ModelPredictor, load_predictor
    from forecaster.scoring import forecast_range, positions_for, score
    from forecaster.training import train_model
    from forecaster.training_loop import print_progress

    if not 0.0 < args.train_frac < 1.0:
        print("volcast backtest: --train-frac must be between 0 and 1", file=sys.stderr)
        return 2
    model, training = model_settings(args)
    if args.model:
        model = model.model_copy(update={"name": args.model})
    if args.epochs:
        training = training.model_copy(update={"epochs": args.epochs})
    try:
        frames = read_frames(args.bars)
    except BarsFileError as exc:
        print(f"volcast backtest: {exc}", file=sys.stderr)
        return 1
    if (args.plot or args.plot_hour) and len(frames) > 1:
        print("volcast backtest: --plot and --plot-hour draw one file: give one BARS file with them", file=sys.stderr)
        return 2
    at_ms = None
    if args.at is not None:
        from volcast.commands.hour_curve import parse_at

        if not args.plot_hour:
            print("volcast backtest: --at chooses the moment of --plot-hour: give --plot-hour FILE.png too",
                  file=sys.stderr)
            return 2
        try:
            at_ms = parse_at(args.at)
        except ValueError as exc:
            print(f"volcast backtest: {exc}", file=sys.stderr)
            return 2
    # Computed on the whole files, before the split: a slice keeps its rows.
    frames, coverage = attach_configured(frames, model.features)
    for line in describe(coverage or {}):
        print(line, file=sys.stderr)
    splits = {key: int(len(frame) * args.train_frac) for key, frame in frames}
    train = [(key, frame[: splits[key]]) for key, frame in frames]
    tests = {key: (splits[key], len(frame)) for key, frame in frames}
    names = ", ".join(str(p) for p in args.bars)

    def too_few(reason: object) -> int:
        counts = "; ".join(f"{key}: {len(f)} bars, {splits[key]} to train on, {len(f) - splits[key]} to test"
                           for key, f in frames)
        print(f"volcast backtest: {names}: too few bars to backtest ({counts}; {reason}): give longer bars files",
              file=sys.stderr)
        return 1

    if any(split < 2 or len(f) - split < 1 for (_, f), split in zip(frames, splits.values(), strict=True)):
        return too_few("every baseline needs at least 2 bars to fit on")
    interval = frames[0][1].interval_ms
    if (args.horizons or args.plot_hour) and not args.artifact:
        from forecaster.horizons import resolve

        wanted = resolve(model, interval)
        if not wanted.multi:
            return no_horizons(model.name)
        if args.plot_hour:  # a wrong --at is told before training, not after
            from volcast.commands.hour_curve import choose_position

            key, frame = frames[0]
            try:
                choose_position(frame, tests[key], wanted, 1, at_ms)
            except ValueError as exc:
                print(f"volcast backtest: {exc}", file=sys.stderr)
                return 2
    per_file: dict[str, dict[str, dict[str, float]]] = {key: {} for key, _ in frames}
    predictor: ModelPredictor
    try:
        for name in BASELINE_NAMES:
            baseline = make_baseline(name, interval)
            baseline.fit(train)
            for key, frame in frames:
                per_file[key][name] = score(ModelPredictor(baseline, name, "baseline"), [(key, frame)], tests[key])
        if args.artifact:
            predictor = load_predictor(args.artifact, model)
        else:
            trained = train_model(train, model, training, progress=print_progress)
            predictor = ModelPredictor(trained.model, model.name, "backtest")
        for key, frame in frames:
            # Its band also as the live worker publishes it: calibrated online from the bars before.
            per_file[key][predictor.name] = score(predictor, [(key, frame)], tests[key], calibrate=True)
    except ArtifactError as exc:
        print(f"volcast backtest: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        return too_few(exc)
    n = sum(len(f) for _, f in frames)
    tested = n - sum(splits.values())
    scores = next(iter(per_file.values())) if len(frames) == 1 else _means(per_file)
    result: dict[str, Any] = {"bars": n, "test_bars": tested, "models": scores}
    if len(frames) > 1:
        result["files"] = per_file
    if coverage is not None:
        result["market"] = {key: got.as_dict() for key, got in coverage.items()}
    if args.horizons:
        from forecaster.horizon_scoring import (
            baseline_forecasts,
            model_forecast,
            ratios,
            score_targets,
            scoring_positions,
        )

        spec = predictor.model.horizon_spec
        if not spec.multi:
            return no_horizons(predictor.name)
        # Pooled over the files.
        targets = [scoring_positions(frame, tests[key], spec, predictor.model.min_history) for key, frame in frames]
        by_model: dict[str, Any] = {}
        try:
            for name, forecast in baseline_forecasts(spec, train).items():
                by_model[name] = score_targets(forecast, frames, targets, spec)
            by_model[predictor.name] = score_targets(model_forecast(predictor.model), frames, targets, spec,
                                                     predictor.model.quantile_levels)
        except ValueError as exc:
            return too_few(exc)
        result["horizons"] = {"bars": spec.bars, "sums": dict(spec.sums), "models": by_model,
                              "ratio_to_har": ratios(by_model[predictor.name], by_model["har"])}
    if args.plot:
        key, frame = frames[0]
        split = splits[key]
        day = max(1, 86_400_000 // frame.interval_ms)
        pos = positions_for(frame, (max(split, n - day), n), predictor.model.min_history)
        point, quants = forecast_range(predictor, key, frame, pos)
        _plot(args.plot, frame.open_time_ms[pos], frame.volume[pos], point, quants,
              predictor.model.quantile_levels, plot_title(key, predictor.name, scores, n - split))
        result["plot"] = str(args.plot)
    hour_lines: list[str] = []
    if args.plot_hour:
        code, hour_lines = _plot_hour(args.plot_hour, at_ms, predictor, frames[0], tests[frames[0][0]], train, result)
        if code:
            return code
    if args.json:
        print(json.dumps(result))
    else:
        over = f" (scores: mean over {len(frames)} files)" if len(frames) > 1 else ""
        print(f"{n} bars, {tested} tested one step ahead{over}")
        print(f"{'model':<10} {'rmse_log':>9} {'mae':>12} {'mape':>8} {'mase':>7} {'cov80':>6} {'cal80':>6}")
        for name, s in scores.items():
            cov = f"{s['coverage_80']:.3f}" if "coverage_80" in s else "-"
            cal = f"{s['coverage_80_calibrated']:.3f}" if "coverage_80_calibrated" in s else "-"
            print(f"{name:<10} {s['rmse_log']:>9.4f} {s['mae']:>12.4g} {s['mape']:>8.3f} {s['mase']:>7.4f} {cov:>6}"
                  f" {cal:>6}")
        if any("coverage_80_calibrated" in s for s in scores.values()):
            print("cov80: share of test bars inside the model's own 10-90% band; cal80: inside the band as "
                  "published live, calibrated online from the bars before each one (nominal 0.80)")
        if "horizons" in result:
            print_horizons(result["horizons"], predictor.name)
        for line in hour_lines:
            print(line)
    return 0


def _plot_hour(path: Path, at_ms: int | None, predictor: ModelPredictor, file: tuple[str, BarFrame],
               test_range: tuple[int, int], train: list[tuple[str, BarFrame]],
               result: dict[str, Any]) -> tuple[int, list[str]]:
    """``--plot-hour``: the forecast at one moment, drawn to ``path`` and kept in ``result``; the
    exit code (0: drawn) and the lines that print it for a reader."""
    from forecaster.horizon_scoring import baseline_forecasts
    from volcast.commands.hour_curve import choose_position, hour_curve, plot_hour, summary_lines

    spec = predictor.model.horizon_spec
    if not spec.multi:
        return no_horizons(predictor.name), []
    key, frame = file
    try:
        position = choose_position(frame, test_range, spec, predictor.model.min_history, at_ms)
    except ValueError as exc:
        print(f"volcast backtest: {exc}", file=sys.stderr)
        return 2, []
    curve = hour_curve(predictor.model, predictor.name, baseline_forecasts(spec, train)["har"], key, frame,
                       test_range, position)
    plot_hour(path, curve)
    result["hour_curve"] = {**curve.as_dict(), "plot": str(path)}
    return 0, summary_lines(curve)


def _means(per_file: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Each model's scores averaged over the files (``bars`` and ``out_of_bound`` summed)."""
    out: dict[str, dict[str, float]] = {}
    for name in next(iter(per_file.values())):
        rows = [scores[name] for scores in per_file.values()]
        out[name] = {metric: (sum(r[metric] for r in rows) if metric in ("bars", "out_of_bound")
                              else sum(r[metric] for r in rows) / len(rows))
                     for metric in rows[0] if all(metric in r for r in rows)}
    return out


def no_horizons(name: str) -> int:
    print(f"volcast backtest: --horizons: {name} forecasts the next bar only (seed always does; otherwise set "
          "model.horizons above 1 or model.horizon_sums in the config)", file=sys.stderr)
    return 2


def print_horizons(horizons: dict[str, Any], name: str) -> None:
    """rmse_log / MASE per horizon (a few of them; --json has all) and per window, and the model's
    rmse_log over HAR direct's. cov80: the model's own 10-90% band (before any calibration); cal80:
    the band as published live, calibrated online per horizon."""
    models = horizons["models"]
    bars = horizons["bars"]
    shown = sorted({h for h in (1, 2, 3, 5, 10, 15, 30, 45, 60, bars) if h <= bars})
    first = next(iter(models.values()))
    print(f"\nper horizon ({first['forecasts']} forecasts; rmse_log / MASE; {name}/har is rmse_log over HAR direct's)")
    names = list(models)
    print(f"{'horizon':<8} " + " ".join(f"{m:>16}" for m in names) + f" {name + '/har':>10} {'cov80':>6} {'cal80':>6}")
    rows = [(f"+{h}", [m["horizons"][h - 1] for m in models.values()], horizons["ratio_to_har"]["horizons"][h - 1])
            for h in shown]
    rows += [(label, [m["sums"][label] for m in models.values()], horizons["ratio_to_har"]["sums"][label])
             for label in horizons["sums"]]
    for label, cells, ratio in rows:
        cov, cal = cells[-1].get("coverage_80"), cells[-1].get("coverage_80_calibrated")
        print(f"{label:<8} " + " ".join(f"{c['rmse_log']:>8.4f} / {c['mase']:<5.3f}" for c in cells)
              + f" {ratio:>10.4f} {'-' if cov is None else f'{cov:.3f}':>6} {'-' if cal is None else f'{cal:.3f}':>6}")


def plot_title(key: str, name: str, scores: dict[str, dict[str, float]], test_bars: int) -> str:
    """The plot's title carries the scores, so a saved picture says how good the forecast is."""
    def one(model: str) -> str:
        s = scores[model]
        return f"{model} rmse_log {s['rmse_log']:.4f}, MASE {s['mase']:.3f}"

    others = "; ".join(one(m) for m in ("har", "naive") if m in scores and m != name)
    return f"{key}: {one(name)}\n{others} (one step ahead over {test_bars} test bars)"


def _plot(path: Path, times: Any, actual: Any, point: Any, quants: Any, levels: tuple[float, ...], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    stamps = np.array(times, dtype="datetime64[ms]")
    fig, ax = plt.subplots(figsize=(12, 4.5))
    if quants is not None and 0.1 in levels and 0.9 in levels:
        ax.fill_between(stamps, quants[:, levels.index(0.1)], quants[:, levels.index(0.9)],
                        color="tab:orange", alpha=0.25, step="mid", label="80% band")
    ax.plot(stamps, actual, color="black", lw=0.8, label="actual")
    ax.plot(stamps, point, color="tab:orange", lw=1.0, label="forecast")
    ax.set_yscale("symlog")
    ax.set_ylabel("volume (base asset)")
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Title": title})
    plt.close(fig)
