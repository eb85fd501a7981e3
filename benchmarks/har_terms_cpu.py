"""CPU of one chunk's forward pass at a boundary, on the worker's own path, and of its HAR terms.

The worker's batch is a view of its ``BarMatrix`` (``--symbols`` feeds, 500: one chunk), whose
log-volume plane is computed once per bar when the bar is written; the default LSTM (60 horizons,
three windows, three quantiles) has prepared its state over the older bars
(``ModelPredictor.prepare``, forecaster/lstm_prefix.py), so the forward pass takes one LSTM step
per feed, as at a live boundary. Measured, best of ``--reps`` in CPU time of this thread, back
to back in one run (so their ratios hold on a loaded machine): ``predict_batch`` (network, HAR
base, guard, rounding, horizon block); ``LstmInputs.statics`` (every static input and the HAR
base); and inside it ``Har.design`` (HAR's regressors: the last bar, the means over HAR_WINDOWS
of the day of bars, the time-of-day profile), its ``trailing_means`` (the part over the day of
bars), and the per-target time-of-day terms (day and hour profiles), which depend only on the
feeds and the next bar's time.

For instruction counts, run it under callgrind with ``--part`` and ``--reps 0`` / ``--reps N``
and take the difference (leaves out the set-up):

    PYTHONPATH=$PWD .venv/bin/python benchmarks/har_terms_cpu.py --json
    valgrind --tool=callgrind PYTHONPATH=... python benchmarks/har_terms_cpu.py --part design --reps 100
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
HISTORY = 1500  # bars per feed, as benchmarks/latency.py: look_back plus HAR's day


def setup(cache: Path, n: int) -> tuple[dict[str, Callable[[], Any]], Callable[[], tuple[int, int]]]:
    """The measured parts, each a call on the same boundary's batch of ``n`` feeds, and the model's
    (prepared, whole-window) forecast counts."""
    from benchmarks.latency import real_bars, train_artifact
    from forecaster.bar_matrix import COLUMNS, BarMatrix
    from forecaster.baselines import target_open_times
    from forecaster.features import slot_of_day, slots_per_day, trailing_means
    from forecaster.frame import BarFrame
    from forecaster.horizons import HOUR_MS, slot_of_hour
    from forecaster.lstm_model import LstmModel
    from forecaster.predictor import ModelPredictor
    from forecaster.training import load_model
    from volcast.keys import Feed
    from volcast.settings import ModelSettings

    models = cache / "horizons"  # the same cache as benchmarks/payload_cpu.py
    if not (models / "trained").exists():
        models.mkdir(parents=True, exist_ok=True)
        train_artifact(models, None, "1")
    model, _ = load_model(next((models / "trained").iterdir()), ModelSettings())
    assert isinstance(model, LstmModel)  # train_artifact trains the default LSTM
    predictor = ModelPredictor(model, "lstm", "1")
    # A different real stretch per feed, on the same times (as benchmarks/latency.py), sliced
    # from one frame: building 500 frames bar by bar would dominate a run under callgrind.
    whole = BarFrame.from_bars(real_bars(), 60_000)
    times = whole.open_time_ms[:HISTORY]
    frames = [replace(whole[(i * 37) % 1000 :][:HISTORY], open_time_ms=times) for i in range(n)]
    feeds = [Feed("binance", f"S{i:04d}/USDT", 60_000) for i in range(n)]
    keys = [f"binance:S{i:04d}/USDT" for i in range(n)]

    def values(frame: BarFrame, part: slice) -> Any:
        return np.stack([np.asarray(getattr(frame, c)[part], dtype=np.float64) for c in COLUMNS])

    matrix = BarMatrix(60_000, model.look_back + 1, rows=n)
    for feed, frame in zip(feeds, frames, strict=True):
        matrix.write(feed, frame.open_time_ms[:-1], values(frame, slice(0, -1)), continues=False)
    before, newest = int(frames[0].open_time_ms[-2]), int(frames[0].open_time_ms[-1])
    # What forecaster/preparation.py does once the boundary before is out, then the new bar.
    _, prepared = matrix.batch(feeds, before, predictor.prepare_bars)
    predictor.prepare(prepared.rows(np.arange(n)), keys)
    matrix.append(feeds, newest, np.stack([values(f, slice(-1, None))[:, 0] for f in frames], axis=1))
    length = predictor.history_length(matrix.available(feeds[0], newest))
    assert length is not None
    _, batch = matrix.batch(feeds, newest, length)
    positions = np.array([batch.volume.shape[1]], dtype=np.int64)
    inputs = model.inputs
    targets = target_open_times(batch, positions)
    hour = inputs.hour
    assert hour is not None
    parts: dict[str, Callable[[], Any]] = {
        "predict_batch": lambda: predictor.predict_batch(batch, keys),
        "statics": lambda: inputs.statics(batch, keys, positions),
        "design": lambda: inputs.har.design(batch, keys, positions),
        "trailing_means": lambda: trailing_means(batch.log_volume, positions),
        "target_tod_day": lambda: inputs.har.target_tod(keys, slot_of_day(targets, 60_000), slots_per_day(60_000)),
        "target_tod_hour": lambda: hour.target_tod(keys, slot_of_hour(targets, 60_000), HOUR_MS // 60_000),
    }
    return parts, model.prepared_counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--reps", type=int, default=30, help="repetitions measured (0: set-up only)")
    parser.add_argument("--part", default=None, help="run only this part --reps times (for callgrind)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "volcast-cpu-models")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    parts, counts = setup(args.cache, args.symbols)
    if args.part is not None:
        work = parts[args.part]
        work()  # warm: the caches every worker has filled
        for _ in range(args.reps):
            work()
        return 0
    cpu: dict[str, list[float]] = {name: [] for name in parts}
    for work in parts.values():
        work()
    for _ in range(args.reps):
        for name, work in parts.items():  # taking turns, so load moves every part alike
            started = time.thread_time()
            work()
            cpu[name].append(time.thread_time() - started)
    best = {name: min(v) * 1000 for name, v in cpu.items()} if args.reps else {}
    result: dict[str, Any] = {
        "symbols": args.symbols,
        "forecasts_prepared_whole": counts(),
        "reps": args.reps,
        "cpu_ms_best": {k: round(v, 3) for k, v in best.items()},
        "cpu_ms_median": {k: round(statistics.median(v) * 1000, 3) for k, v in cpu.items()} if args.reps else {},
        "design_share_of_predict_batch": round(best["design"] / best["predict_batch"], 3) if best else None,
        "trailing_means_share_of_predict_batch": round(best["trailing_means"] / best["predict_batch"], 3)
        if best
        else None,
    }
    print(orjson.dumps(result).decode() if args.json else orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
