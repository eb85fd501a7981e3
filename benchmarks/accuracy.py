"""Accuracy of every model on the 1-minute Binance USD-M files of at least 4 weeks.

For each file: train on the first ``--train-frac`` (capped to the last ``--train-days`` days
before the split), forecast one step ahead over the rest, and score naive, ewma, tod, har,
seed, lstm (default) and ensemble. Prints one JSON object (``--json``) or a Markdown table.

``--market`` also trains ``lstm_market``: the default features plus the market-wide inputs
(forecaster/market.py), computed across every selected file at each bar open time (files that
overlap in time, e.g. ``--only 2023-02``), so each file's model reads what the others did.

    .venv/bin/python benchmarks/accuracy.py --json > accuracy.json

``--horizons``: instead, per file the default model (with its horizons, model.horizons) against
naive, the time-of-day profile and HAR direct (one regression per horizon, fitted on the same
training bars), scored at every horizon and cumulative window over the test part
(forecaster/horizon_scoring.py): rmse_log, MASE, 80% coverage, and the model's rmse_log over HAR's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "bars"
MIN_BARS = 28 * 1440


def files(data: Path) -> list[Path]:
    from forecaster.frame import BarFrame

    out = []
    for path in sorted(data.glob("binance-usdm_*_1m_*.csv.gz")):
        if len(BarFrame.from_csv(path)) >= MIN_BARS:
            out.append(path)
    return out


def run_file(path: Path, args: argparse.Namespace, group: list[Path] | None = None) -> dict[str, Any]:
    import torch

    from forecaster.baselines import BASELINE_NAMES, make_baseline
    from forecaster.ensemble_model import EnsembleModel
    from forecaster.frame import BarFrame
    from forecaster.predictor import ModelPredictor
    from forecaster.scoring import score
    from forecaster.training import train_model
    from forecaster.training_loop import quiet
    from volcast.settings import ModelSettings, TrainingSettings

    torch.set_num_threads(1)
    frame = BarFrame.from_csv(path)
    n = len(frame)
    split = int(n * args.train_frac)
    start = max(0, split - args.train_days * 1440)
    key = path.name.split("_")[1]
    train = [(key, frame[start:split])]
    test = (split, n)
    result: dict[str, Any] = {"bars": n, "test_bars": n - split, "train_bars": split - start, "models": {}}
    for name in BASELINE_NAMES:
        baseline = make_baseline(name)
        baseline.fit(train)
        result["models"][name] = score(ModelPredictor(baseline, name, "baseline"), [(key, frame)], test)
    training = TrainingSettings(
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        patience=args.patience, threads=1, seed=args.training_seed,
    )
    trained = train_model(train, ModelSettings(name="ensemble", members=args.members), training, progress=quiet)
    ensemble = trained.model
    assert isinstance(ensemble, EnsembleModel)
    # The bands also as published live: calibrated online through the test part (forecaster/calibration.py).
    result["models"]["lstm"] = score(ModelPredictor(ensemble.lstm, "lstm", "bench"), [(key, frame)], test,
                                     calibrate=True)
    result["models"]["lstm"]["train_seconds"] = trained.scores["train_seconds"]
    result["models"]["lstm"]["epochs_run"] = trained.scores["epochs_run"]
    result["models"]["ensemble"] = score(ModelPredictor(ensemble, "ensemble", "bench"), [(key, frame)], test,
                                         calibrate=True)
    result["models"]["ensemble"]["weight"] = ensemble.weight
    if group:
        from forecaster.market import MARKET_FEATURES, attach

        keyed = [(p.name.split("_")[1], BarFrame.from_csv(p)) for p in group]
        # The market inputs are computed on the whole files, then the frame is split as above.
        exchanges = {k: p.name.split("_")[0] for (k, _), p in zip(keyed, group, strict=True)}
        attached, coverage = attach(keyed, MARKET_FEATURES, exchanges)
        market_frame = dict(attached)[key]
        features = (*ModelSettings().features, *MARKET_FEATURES)
        market_model = train_model([(key, market_frame[start:split])],
                                   ModelSettings(features=features, members=args.members), training, progress=quiet)
        scored = score(ModelPredictor(market_model.model, "lstm", "bench"), [(key, market_frame)], test,
                       calibrate=True)
        scored["train_seconds"] = market_model.scores["train_seconds"]
        scored["epochs_run"] = market_model.scores["epochs_run"]
        scored["market_coverage"] = coverage[key].as_dict()  # type: ignore[assignment]
        result["models"]["lstm_market"] = scored
    if args.no_seed:
        return result
    seed_train = [(key, frame[max(start, split - args.seed_days * 1440) : split])]
    # The design note's training, cut short: batch 32, Adam at Keras' default rate, no early stop.
    seed_training = TrainingSettings(epochs=args.seed_epochs, batch_size=32, learning_rate=1e-3, patience=0, threads=1)
    seed = train_model(seed_train, ModelSettings(name="seed"), seed_training, progress=quiet)
    result["models"]["seed"] = score(ModelPredictor(seed.model, "seed", "bench"), [(key, frame)], test)
    result["models"]["seed"]["seconds_per_epoch"] = seed.scores["train_seconds"] / args.seed_epochs
    result["models"]["seed"]["epochs"] = args.seed_epochs
    result["models"]["seed"]["train_bars"] = len(seed_train[0][1])
    return result


def run_file_horizons(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from forecaster.frame import BarFrame
    from forecaster.horizon_scoring import (
        baseline_forecasts,
        model_forecast,
        ratios,
        score_targets,
        scoring_positions,
    )
    from forecaster.training import train_model
    from forecaster.training_loop import quiet
    from volcast.settings import ModelSettings, TrainingSettings

    torch.set_num_threads(1)
    frame = BarFrame.from_csv(path)
    n = len(frame)
    split = int(n * args.train_frac)
    start = max(0, split - args.train_days * 1440)
    key = path.name.split("_")[1]
    train = [(key, frame[start:split])]
    training = TrainingSettings(
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        patience=args.patience, threads=1, seed=args.training_seed,
    )
    trained = train_model(train, ModelSettings(members=args.members), training, progress=quiet)
    model = trained.model
    spec = model.horizon_spec
    pos = scoring_positions(frame, (split, n), spec, model.min_history)
    models = {name: score_targets(forecast, [(key, frame)], [pos], spec)
              for name, forecast in baseline_forecasts(spec, train).items()}
    models["lstm"] = score_targets(model_forecast(model), [(key, frame)], [pos], spec, model.quantile_levels,
                                   window_powers=args.window_powers)
    # The calibration's step per window is chosen here, on the training span's last quarter
    # (bars before the split only; the model saw them in training or early stopping).
    quarter = scoring_positions(frame, (split - (split - start) // 4, split), spec, model.min_history)
    selection = score_targets(model_forecast(model), [(key, frame)], [quarter], spec, model.quantile_levels,
                              window_powers=args.window_powers)
    return {"bars": n, "train_bars": split - start, "forecasts": len(pos), "horizons": spec.bars,
            "selection": {"forecasts": len(quarter), "sums": selection["sums"],
                          "horizons": {str(h): selection["horizons"][h - 1] for h in (1, 60) if h <= spec.bars}},
            "sums": dict(spec.sums), "train_seconds": trained.scores["train_seconds"],
            "epochs_run": trained.scores["epochs_run"], "models": models,
            "ratio_to_har": ratios(models["lstm"], models["har"])}


def summarise_horizons(per_file: dict[str, Any], args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    """Mean rmse_log over the files per horizon and window, lstm over HAR direct, and the goals."""
    files = list(per_file.values())
    bars = files[0]["horizons"]
    labels = list(files[0]["sums"])

    def mean(model: str, pick: Any) -> float:
        return float(sum(pick(r["models"][model]) for r in files) / len(files))

    per_h = [mean("lstm", lambda m, h=h: m["horizons"][h]["rmse_log"])
             / mean("har", lambda m, h=h: m["horizons"][h]["rmse_log"]) for h in range(bars)]
    per_sum = {label: mean("lstm", lambda m, x=label: m["sums"][x]["rmse_log"])
               / mean("har", lambda m, x=label: m["sums"][x]["rmse_log"]) for label in labels}
    return {
        "files": len(files),
        "ratio_lstm_to_har_per_horizon": per_h,
        "ratio_lstm_to_har_per_sum": per_sum,
        "worst_horizon": 1 + max(range(bars), key=lambda h: per_h[h]),
        "worst_ratio": max(per_h),
        "goal_every_horizon": 0.97,
        "goal_met_every_horizon": max(per_h) <= 0.97,
        "goal_sum_1h": 0.95,
        "goal_met_sum_1h": per_sum.get("1h", float("inf")) <= 0.95,
        "seconds": seconds,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("json",)},
    }


def markdown_horizons(results: dict[str, Any]) -> str:
    """Per file: lstm/HAR-direct rmse_log at a few horizons and per window; a mean row last."""
    per_file = results["files"]
    first = next(iter(per_file.values()))
    bars = first["horizons"]
    shown = [h for h in (1, 2, 5, 15, 30, 60) if h <= bars]
    labels = list(first["sums"])
    head = [f"+{h}" for h in shown] + labels
    lines = ["| file | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
    for path in sorted(per_file):
        r = per_file[path]["ratio_to_har"]
        cells = [f"{r['horizons'][h - 1]:.4f}" for h in shown] + [f"{r['sums'][x]:.4f}" for x in labels]
        lines.append(f"| {_short(path)} | " + " | ".join(cells) + " |")
    summary = results["summary"]
    cells = [f"**{summary['ratio_lstm_to_har_per_horizon'][h - 1]:.4f}**" for h in shown]
    cells += [f"**{summary['ratio_lstm_to_har_per_sum'][x]:.4f}**" for x in labels]
    lines.append("| mean | " + " | ".join(cells) + " |")
    lines += ["", coverage_markdown_horizons(per_file), "", window_power_markdown(per_file)]
    return "\n".join(lines)


def window_power_markdown(per_file: dict[str, Any]) -> str:
    """lstm's calibrated window bands per file and window power (calibration.WINDOW_POWER):
    coverage / width / interval score (log1p), on the training span's last quarter (where the
    power is chosen) and on the test part, with the raw band's last."""
    lines = ["| file, window | part | " + " | ".join(f"power {p}" for p in _powers(per_file)) + " | raw |",
             "|---|---|" + "---|" * (len(_powers(per_file)) + 1)]
    for path in sorted(per_file):
        r = per_file[path]
        for part, sums in (("training, last quarter", r.get("selection", {}).get("sums", {})),
                           ("test", r["models"]["lstm"]["sums"])):
            for label, c in sums.items():
                if "by_window_power" not in c:
                    continue
                cells = [_band(c["by_window_power"][p]) for p in _powers(per_file)]
                raw = {"coverage_80": c["coverage_80"], "band_width_log": c["band_width_log"],
                       "interval_score_log": c["interval_score_log"]}
                lines.append(f"| {_short(path)}, {label} | {part} | " + " | ".join([*cells, _band(raw)]) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _powers(per_file: dict[str, Any]) -> list[str]:
    for r in per_file.values():
        for c in r["models"]["lstm"]["sums"].values():
            if "by_window_power" in c:
                return sorted(c["by_window_power"], key=float)
    return []


def _band(b: dict[str, float]) -> str:
    return f"{b['coverage_80']:.3f} / {b['band_width_log']:.3f} / {b['interval_score_log']:.3f}"


def coverage_markdown_horizons(per_file: dict[str, Any]) -> str:
    """lstm's 80% band per file at every horizon and window: coverage raw / calibrated (the range
    over the per-bar horizons, then a few of them and each window)."""
    first = next(iter(per_file.values()))
    bars = first["horizons"]
    shown = [h for h in (1, 5, 15, 60) if h <= bars]
    labels = list(first["sums"])
    head = ["forecasts", f"+1..+{bars} raw", "calibrated", *(f"+{h}" for h in shown), *labels]
    lines = ["| file | " + " | ".join(head) + " |", "|---|" + "---:|" + "---|" * (len(head) - 1)]
    for path in sorted(per_file):
        m = per_file[path]["models"]["lstm"]
        cells = [*m["horizons"], *m["sums"].values()]
        if not all("coverage_80_calibrated" in c for c in cells):
            continue
        raw = [c["coverage_80"] for c in m["horizons"]]
        cal = [c["coverage_80_calibrated"] for c in m["horizons"]]
        pairs = [m["horizons"][h - 1] for h in shown] + [m["sums"][x] for x in labels]
        row = [f"{per_file[path]['forecasts']:,}", f"{min(raw):.3f}-{max(raw):.3f}",
               f"**{min(cal):.3f}-{max(cal):.3f}**",
               *(f"{c['coverage_80']:.3f} / {c['coverage_80_calibrated']:.3f}" for c in pairs)]
        lines.append(f"| {_short(path)} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    """Per file: rmse_log and MASE of every model, then lstm/har; a mean row last. Then the
    coverage of lstm's 80% band, raw and calibrated."""
    names = [k for k in ("naive", "ewma", "tod", "har", "seed", "lstm", "ensemble", "lstm_market")
             if all(k in r["models"] for r in results["files"].values())]
    market = "lstm_market" in names
    lines = [
        "| file | " + " | ".join(names) + " | lstm/har |" + (" lstm_market/har |" if market else ""),
        "|---|" + "---:|" * (len(names) + 1 + market),
    ]
    per_file = results["files"]
    for path in sorted(per_file):
        m = per_file[path]["models"]
        cells = " | ".join(f"{m[k]['rmse_log']:.4f} / {m[k]['mase']:.3f}" for k in names)
        extra = f" {m['lstm_market']['rmse_log'] / m['har']['rmse_log']:.4f} |" if market else ""
        lines.append(f"| {_short(path)} | {cells} | {m['lstm']['rmse_log'] / m['har']['rmse_log']:.4f} |{extra}")
    if per_file:
        means = {
            k: (
                sum(r["models"][k]["rmse_log"] for r in per_file.values()) / len(per_file),
                sum(r["models"][k]["mase"] for r in per_file.values()) / len(per_file),
            )
            for k in names
        }
        cells = " | ".join(f"**{means[k][0]:.4f}** / {means[k][1]:.3f}" for k in names)
        extra = f" **{means['lstm_market'][0] / means['har'][0]:.4f}** |" if market else ""
        lines.append(f"| mean | {cells} | **{means['lstm'][0] / means['har'][0]:.4f}** |{extra}")
    lines += ["", coverage_markdown(per_file)]
    return "\n".join(lines)


def coverage_markdown(per_file: dict[str, Any]) -> str:
    """lstm's 80% band per file: raw coverage and width, calibrated coverage and width (log1p)."""
    lines = ["| file | raw coverage | raw width | calibrated coverage | calibrated width | bars calibrated |",
             "|---|---:|---:|---:|---:|---:|"]
    for path in sorted(per_file):
        m = per_file[path]["models"]["lstm"]
        if "coverage_80_calibrated" not in m:
            continue
        lines.append(f"| {_short(path)} | {m['coverage_80']:.3f} | {m['band_width_log']:.3f} | "
                     f"{m['coverage_80_calibrated']:.3f} | {m['band_width_log_calibrated']:.3f} | "
                     f"{m['calibrated_share']:.3f} |")
    return "\n".join(lines)


def _short(name: str) -> str:
    return name.removeprefix("binance-usdm_").removesuffix(".csv.gz")


def summarise(per_file: dict[str, Any], args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    lstm = [r["models"]["lstm"]["rmse_log"] for r in per_file.values()]
    har = [r["models"]["har"]["rmse_log"] for r in per_file.values()]
    mean_lstm, mean_har = sum(lstm) / len(lstm), sum(har) / len(har)
    market: dict[str, Any] = {}
    if all("lstm_market" in r["models"] for r in per_file.values()):
        mean_market = sum(r["models"]["lstm_market"]["rmse_log"] for r in per_file.values()) / len(per_file)
        market = {"mean_rmse_log_lstm_market": mean_market, "ratio_lstm_market_to_har": mean_market / mean_har}
    raw = [r["models"]["lstm"].get("coverage_80") for r in per_file.values()]
    cal = [r["models"]["lstm"].get("coverage_80_calibrated") for r in per_file.values()]
    return {
        "files": len(per_file),
        "coverage_80_raw_range": [min(raw), max(raw)] if None not in raw else None,
        "coverage_80_calibrated_range": [min(cal), max(cal)] if None not in cal else None,
        "coverage_goal": [0.77, 0.83],
        "mean_rmse_log_lstm": mean_lstm,
        "mean_rmse_log_har": mean_har,
        "ratio_lstm_to_har": mean_lstm / mean_har,
        "goal_ratio": 0.97,
        **market,
        "lstm_beats_seed_on_every_file": all(
            r["models"]["lstm"]["rmse_log"] < r["models"]["seed"]["rmse_log"] for r in per_file.values()
        ) if all("seed" in r["models"] for r in per_file.values()) else None,
        "seconds": seconds,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("json",)},
    }


def summary_of(per_file: dict[str, Any], args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    return (summarise_horizons if args.horizons else summarise)(per_file, args, seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--json", action="store_true", help="print JSON instead of the Markdown table")
    parser.add_argument("--out", type=Path, default=None, help="also write the results here after every file")
    parser.add_argument("--train-frac", type=float, default=0.7)
    parser.add_argument("--train-days", type=int, default=21)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--members", type=int, default=None, help="lstm members (default: model.members' default)")
    parser.add_argument("--training-seed", type=int, default=0,
                        help="lstm's training seed (training.seed): a second seed tells a change from seed noise")
    parser.add_argument("--seed-epochs", type=int, default=3)
    parser.add_argument("--seed-days", type=int, default=7)
    parser.add_argument("--no-seed", action="store_true", help="skip the seed model (the slowest part)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="substrings of file names to run")
    parser.add_argument("--horizons", action="store_true",
                        help="score the default model at every horizon and window against HAR direct instead")
    parser.add_argument("--window-powers", type=float, nargs="*", default=[0.0, 0.5, 1.0],
                        help="--horizons: also calibrate each window with step / k**power for these powers "
                             "(by_window_power; and on the training span's last quarter, selection)")
    parser.add_argument("--market", action="store_true",
                        help="also train lstm_market: + market-wide inputs across the selected files (same dates)")
    args = parser.parse_args()
    if args.members is None:
        from volcast.settings import ModelSettings

        args.members = ModelSettings().members
    paths = files(args.data)
    if args.only:
        paths = [p for p in paths if any(s in p.name for s in args.only)]
    if not paths:
        print(f"no 1-minute binance-usdm files of at least {MIN_BARS} bars in {args.data}", file=sys.stderr)
        return 1
    started = time.perf_counter()
    per_file: dict[str, Any] = {}
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        if args.horizons:
            futures = {pool.submit(run_file_horizons, p, args): p.name for p in paths}
        else:
            futures = {pool.submit(run_file, p, args, paths if args.market else None): p.name for p in paths}
        for fut in as_completed(futures):
            name = futures[fut]
            per_file[name] = fut.result()
            m = per_file[name]["models"]
            if args.horizons:
                r = per_file[name]["ratio_to_har"]
                print(f"done {name}: lstm/har +1 {r['horizons'][0]:.4f}, worst {max(r['horizons']):.4f}, "
                      + ", ".join(f"{x} {v:.4f}" for x, v in r["sums"].items())
                      + f" ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
            else:
                print(
                    f"done {name}: lstm/har {m['lstm']['rmse_log'] / m['har']['rmse_log']:.4f}, 80% coverage raw "
                    f"{m['lstm'].get('coverage_80', float('nan')):.3f} calibrated "
                    f"{m['lstm'].get('coverage_80_calibrated', float('nan')):.3f}"
                    f" ({time.perf_counter() - started:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
            if args.out is not None:
                # Partial results survive a stopped run.
                partial = {"files": per_file, "summary": summary_of(per_file, args, time.perf_counter() - started)}
                args.out.write_text(json.dumps(partial, indent=2))
    results = {"files": per_file, "summary": summary_of(per_file, args, time.perf_counter() - started)}
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(markdown_horizons(results) if args.horizons else markdown(results))
        print(json.dumps(results["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
