"""``volcast backtest``: train on the first part of a bars file, forecast the rest one step ahead."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from volcast.commands._model_config import (
    BarsFileError,
    add_model_config_argument,
    frame_key,
    model_settings,
    read_frame,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bars", type=Path, metavar="BARS", help="bars CSV file (gzip or plain)")
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
    add_model_config_argument(parser)


def main(args: argparse.Namespace) -> int:
    from forecaster.artifact import ArtifactError
    from forecaster.baselines import BASELINE_NAMES, make_baseline
    from forecaster.estimator import print_progress
    from forecaster.predictor import ModelPredictor, load_predictor
    from forecaster.scoring import forecast_range, positions_for, score
    from forecaster.training import train_model

    if not 0.0 < args.train_frac < 1.0:
        print("volcast backtest: --train-frac must be between 0 and 1", file=sys.stderr)
        return 2
    model, training = model_settings(args)
    if args.model:
        model = model.model_copy(update={"name": args.model})
    if args.epochs:
        training = training.model_copy(update={"epochs": args.epochs})
    try:
        frame = read_frame(args.bars)
    except BarsFileError as exc:
        print(f"volcast backtest: {exc}", file=sys.stderr)
        return 1
    key = frame_key(args.bars)
    n = len(frame)
    split = int(n * args.train_frac)
    train = [(key, frame[:split])]
    test = (split, n)

    def too_few(reason: object) -> int:
        print(f"volcast backtest: {args.bars}: {n} bars are too few to backtest ({split} to train on, "
              f"{n - split} to test; {reason}): give a longer bars file", file=sys.stderr)
        return 1

    if split < 2 or n - split < 1:
        return too_few("every baseline needs at least 2 bars to fit on")
    if args.horizons and not args.artifact:
        from forecaster.horizons import resolve

        if not resolve(model, frame.interval_ms).multi:
            return no_horizons(model.name)
    scores: dict[str, dict[str, float]] = {}
    predictor: ModelPredictor
    try:
        for name in BASELINE_NAMES:
            baseline = make_baseline(name, frame.interval_ms)
            baseline.fit(train)
            scores[name] = score(ModelPredictor(baseline, name, "baseline"), [(key, frame)], test)
        if args.artifact:
            predictor = load_predictor(args.artifact, model)
        else:
            trained = train_model(train, model, training, progress=print_progress)
            predictor = ModelPredictor(trained.model, model.name, "backtest")
        # Its band also as the live worker publishes it: calibrated online from the bars before.
        scores[predictor.name] = score(predictor, [(key, frame)], test, calibrate=True)
    except ArtifactError as exc:
        print(f"volcast backtest: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        return too_few(exc)
    result: dict[str, Any] = {"bars": n, "test_bars": n - split, "models": scores}
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
        pos = scoring_positions(frame, test, spec, predictor.model.min_history)
        by_model: dict[str, Any] = {}
        try:
            for name, forecast in baseline_forecasts(spec, train).items():
                by_model[name] = score_targets(forecast, [(key, frame)], [pos], spec)
            by_model[predictor.name] = score_targets(model_forecast(predictor.model), [(key, frame)], [pos], spec,
                                                     predictor.model.quantile_levels)
        except ValueError as exc:
            return too_few(exc)
        result["horizons"] = {"bars": spec.bars, "sums": dict(spec.sums), "models": by_model,
                              "ratio_to_har": ratios(by_model[predictor.name], by_model["har"])}
    if args.plot:
        day = max(1, 86_400_000 // frame.interval_ms)
        pos = positions_for(frame, (max(split, n - day), n), predictor.model.min_history)
        point, quants = forecast_range(predictor, key, frame, pos)
        _plot(args.plot, frame.open_time_ms[pos], frame.volume[pos], point, quants,
              predictor.model.quantile_levels, plot_title(key, predictor.name, scores, n - split))
        result["plot"] = str(args.plot)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{n} bars, {n - split} tested one step ahead")
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
    return 0


def no_horizons(name: str) -> int:
    print(f"volcast backtest: --horizons: {name} forecasts the next bar only (seed always does; otherwise set "
          "model.horizons above 1 or model.horizon_sums in the config)", file=sys.stderr)
    return 2


def print_horizons(horizons: dict[str, Any], name: str) -> None:
    """rmse_log / MASE per horizon (a few of them; --json has all) and per window, and the model's
    rmse_log over HAR direct's. cov80: the model's own 10-90% band (before any calibration)."""
    models = horizons["models"]
    bars = horizons["bars"]
    shown = sorted({h for h in (1, 2, 3, 5, 10, 15, 30, 45, 60, bars) if h <= bars})
    first = next(iter(models.values()))
    print(f"\nper horizon ({first['forecasts']} forecasts; rmse_log / MASE; {name}/har is rmse_log over HAR direct's)")
    names = list(models)
    print(f"{'horizon':<8} " + " ".join(f"{m:>16}" for m in names) + f" {name + '/har':>10} {'cov80':>6}")
    rows = [(f"+{h}", [m["horizons"][h - 1] for m in models.values()], horizons["ratio_to_har"]["horizons"][h - 1])
            for h in shown]
    rows += [(label, [m["sums"][label] for m in models.values()], horizons["ratio_to_har"]["sums"][label])
             for label in horizons["sums"]]
    for label, cells, ratio in rows:
        cov = cells[-1].get("coverage_80")
        print(f"{label:<8} " + " ".join(f"{c['rmse_log']:>8.4f} / {c['mase']:<5.3f}" for c in cells)
              + f" {ratio:>10.4f} {'-' if cov is None else f'{cov:.3f}':>6}")


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
