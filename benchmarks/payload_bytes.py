"""Bytes per retained MQTT message with and without horizons (payload schema 2).

A small lstm (1 epoch: the sizes depend on the numbers' magnitudes, not on their accuracy) is
trained on the first days of a real 1-minute file, then forecasts ``--forecasts`` consecutive
bars through the worker's own path (``ModelPredictor.predict_batch``: guard, 5 significant digits
for the horizons); each forecast is encoded as the worker encodes it. Baseline, same forecasts:
the payload without ``horizons`` (what schema 1 carried).

    PYTHONPATH=. .venv/bin/python benchmarks/payload_bytes.py --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "binance-usdm_NEARUSDT_1m_2023-02-01_03.csv.gz"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--forecasts", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import numpy as np

    from forecaster.features import Batch
    from forecaster.frame import BarFrame
    from forecaster.payload import Prediction
    from forecaster.predictor import ModelPredictor
    from forecaster.training import train_model
    from forecaster.training_loop import quiet
    from volcast.keys import Feed
    from volcast.settings import ModelSettings, TrainingSettings

    frame = BarFrame.from_csv(args.data)
    train_bars = min(len(frame) - args.forecasts, 2600)
    trained = train_model([("k", frame[:train_bars])], ModelSettings(look_back=16, hidden=8),
                          TrainingSettings(epochs=1, patience=0), progress=quiet)
    predictor = ModelPredictor(trained.model, "lstm", "1")
    feed = Feed("binance", "NEAR/USDT", frame.interval_ms)
    with_h, without_h, deflated = [], [], []
    for end in range(train_bars, train_bars + args.forecasts):
        batch = Batch.stack([frame[:end]], predictor.look_back)
        [fc] = predictor.predict_batch(batch, ["k"])
        p = Prediction(feed, int(frame.open_time_ms[end]), int(frame.open_time_ms[end - 1]),
                       float(frame.volume[end - 1]), fc.volume, fc.quantiles, "lstm", "12", False,
                       1_700_000_000_000, horizons=fc.horizons)
        payload = p.to_json()
        with_h.append(len(payload))
        without_h.append(len(replace(p, horizons=None).to_json()))
        deflated.append(len(zlib.compress(payload)))
    spec = trained.model.horizon_spec
    result: dict[str, Any] = {
        "horizons": spec.bars,
        "sums": [label for label, _ in spec.sums],
        "quantiles": list(trained.model.quantile_levels),
        "forecasts": len(with_h),
        "bytes_with_horizons": {"mean": statistics.fmean(with_h), "max": max(with_h)},
        "bytes_next_bar_only": {"mean": statistics.fmean(without_h), "max": max(without_h)},
        "ratio_mean": statistics.fmean(with_h) / statistics.fmean(without_h),
        "deflate_bytes_with_horizons_mean": statistics.fmean(deflated),
        "retained_mb_per_1000_feeds": 1000 * statistics.fmean(with_h) / 1e6,
        "median_volume": float(np.median(frame.volume[train_bars:train_bars + args.forecasts])),
    }
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
