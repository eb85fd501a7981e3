"""Training cost: the default model on 30 days of 1-minute bars of one symbol, on one core.

Prints one JSON object: seconds to train the default (lstm) model, seconds per epoch of the
seed model, and the same run's HAR fit time as a yardstick of the machine's speed.

    .venv/bin/python benchmarks/train.py --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "bars"
FILE = "binance-usdm_FILUSDT_1m_2023-04_2023-06.csv.gz"  # 91 days: its last 30 are used


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bars", type=Path, default=DATA / FILE)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed-epochs", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    from forecaster.baselines import Har
    from forecaster.frame import BarFrame
    from forecaster.training import train_model
    from forecaster.training_loop import quiet
    from volcast.settings import ModelSettings, TrainingSettings

    torch.set_num_threads(1)
    frame = BarFrame.from_csv(args.bars).tail(args.days * 1440)
    if len(frame) < args.days * 1440:
        print(f"{args.bars} has fewer than {args.days} days of 1-minute bars", file=sys.stderr)
        return 1
    frames = [("bench", frame)]
    started = time.perf_counter()
    Har().fit(frames)
    har_seconds = time.perf_counter() - started
    # The default model with the default training settings (early stopping may end it sooner).
    training = TrainingSettings(threads=1)
    lstm = train_model(frames, ModelSettings(), training, progress=quiet)
    # The seed as the design note trains it: batch 32, Adam at Keras' default rate.
    seed_training = TrainingSettings(epochs=args.seed_epochs, batch_size=32, learning_rate=1e-3, threads=1)
    seed = train_model(frames, ModelSettings(name="seed"), seed_training, progress=quiet)
    lstm_seconds = lstm.scores["train_seconds"]
    seed_epoch = seed.scores["train_seconds"] / args.seed_epochs
    result = {
        "bars": len(frame),
        "lstm_train_seconds": lstm_seconds,
        "lstm_epochs_run": lstm.scores["epochs_run"],
        "lstm_settings": training.model_dump(mode="json"),
        "goal_seconds": 120,
        "seed_seconds_per_epoch": seed_epoch,
        "seed_100_epochs_seconds_estimate": 100 * seed_epoch,
        "har_fit_seconds": har_seconds,
        "lstm_to_har_fit_ratio": lstm_seconds / har_seconds,
        "threads": 1,
    }
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
