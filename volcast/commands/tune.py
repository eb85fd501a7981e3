"""``volcast tune``: random search of model settings with expanding-window cross-validation."""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any

from volcast.commands._model_config import BarsFileError, add_model_config_argument, model_settings, read_frames

SPACE: dict[str, tuple[Any, ...]] = {
    "hidden": (16, 32, 50, 64),
    "look_back": (30, 60, 120),
    "learning_rate": (5e-4, 1e-3, 2e-3, 5e-3),
    "layers": (1, 2),
    "dropout": (0.0, 0.1, 0.2),
    "attention": (False, True),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bars", type=Path, nargs="+", metavar="BARS", help="bars CSV files")
    parser.add_argument("--trials", type=int, default=8, help="random settings to try (default 8)")
    parser.add_argument("--folds", type=int, default=3, help="expanding-window folds (default 3)")
    parser.add_argument("--epochs", type=int, default=None, help="override training.epochs per fit")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random search")
    add_model_config_argument(parser)


def main(args: argparse.Namespace) -> int:
    import numpy as np

    from forecaster.predictor import ModelPredictor
    from forecaster.scoring import score
    from forecaster.training import train_model
    from forecaster.training_loop import quiet

    model, training = model_settings(args)
    if model.name == "seed":
        model = model.model_copy(update={"name": "lstm"})
    if args.epochs:
        training = training.model_copy(update={"epochs": args.epochs})
    try:
        frames = read_frames(args.bars)
    except BarsFileError as exc:
        print(f"volcast tune: {exc}", file=sys.stderr)
        return 1
    n = min(len(f) for _, f in frames)
    # Fold k trains on the first (k+1)/(folds+1) of the bars and tests on the next slice.
    edges = [int(n * (k + 1) / (args.folds + 1)) for k in range(args.folds + 1)] + [n]
    rng = random.Random(args.seed)
    best: tuple[float, dict[str, Any]] | None = None
    for trial in range(1, args.trials + 1):
        choice = {name: rng.choice(values) for name, values in SPACE.items()}
        m = model.model_copy(update={k: v for k, v in choice.items() if k != "learning_rate"})
        t = training.model_copy(update={"learning_rate": choice["learning_rate"]})
        losses = []
        try:
            for k in range(args.folds):
                train = [(key, f[: edges[k]]) for key, f in frames]
                trained = train_model(train, m, t, progress=quiet)
                predictor = ModelPredictor(trained.model, m.name, "tune")
                losses.append(score(predictor, frames, (edges[k], edges[k + 1]))["rmse_log"])
        except ValueError as exc:
            print(f"trial {trial}: {choice} skipped: {exc}", file=sys.stderr)
            continue
        mean = float(np.mean(losses))
        print(f"trial {trial}/{args.trials}: rmse_log {mean:.4f} {choice}", file=sys.stderr, flush=True)
        if best is None or mean < best[0]:
            best = (mean, choice)
    if best is None:
        print("volcast tune: no trial could be scored (too few bars?)", file=sys.stderr)
        return 1
    choice = best[1]
    print(f"# best of {args.trials} trials, {args.folds} expanding-window folds: rmse_log {best[0]:.4f}")
    print("model:")
    for name in ("hidden", "look_back", "layers", "dropout", "attention"):
        value = choice[name]
        print(f"  {name}: {str(value).lower() if isinstance(value, bool) else value}")
    print("training:")
    print(f"  learning_rate: {choice['learning_rate']}")
    return 0
