"""CPU of one chunk's forecasts, payloads and PUBLISH packets, in process: what the worker does
on the critical path after the forward pass, for ``--symbols`` feeds at once (500: one chunk).

The forward pass's outputs come from the default LSTM (60 horizons, three windows, three
quantiles; ``--one-step``: the next bar only) over real bars, computed once and cached as arrays
(``--cache``), so the measured part imports no torch and runs under callgrind in minutes. Each
repetition does what ``ModelPredictor.predict_batch`` does after the network (guard, rounding,
the chunk's ``HorizonBlock``), then what ``Worker._hand_over`` does with the forecasts
(``Prediction`` per feed, ``encode_all``) and what the connection does with the payloads (one
PUBLISH packet each, ``mqtt_wire.publish_packet``).

Wall-clock figures on a shared machine move with its load; instruction counts do not. For those,
run it twice under callgrind and take the difference, which leaves out the start-up:

    PYTHONPATH=$PWD .venv/bin/python benchmarks/payload_cpu.py --json            # CPU ms, bytes
    valgrind --tool=callgrind --callgrind-out-file=/dev/null PYTHONPATH=... python benchmarks/payload_cpu.py --reps 0
    valgrind ... benchmarks/payload_cpu.py --reps 5     # (Ir(5) - Ir(0)) / 5 per chunk

``--root`` runs another checkout's forecaster (e.g. main's worktree) with this harness.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
HISTORY = 1500  # bars per feed, as benchmarks/latency.py: look_back plus HAR's day


def make_arrays(cache: Path, n: int, one_step: bool) -> Path:
    """The forward pass's outputs for ``n`` feeds, saved once (this imports torch)."""
    out = cache / f"outputs-{'one-step' if one_step else 'horizons'}-{n}.npz"
    if out.exists():
        return out
    from benchmarks.latency import ONE_STEP, real_bars, train_artifact
    from forecaster.features import Batch
    from forecaster.frame import BarFrame
    from forecaster.training import load_model
    from volcast.settings import ModelSettings

    models = cache / ("one-step" if one_step else "horizons")
    if not (models / "trained").exists():
        models.mkdir(parents=True, exist_ok=True)
        train_artifact(models, ONE_STEP if one_step else None, "1")
    artifact = next((models / "trained").iterdir())
    settings = ModelSettings(**(ONE_STEP if one_step else {}))
    model, _ = load_model(artifact, settings)
    bars = real_bars()
    times = [b.open_time_ms for b in bars]
    # A different real stretch per feed, on the same times (as benchmarks/latency.py).
    frames = [BarFrame.from_bars([replace(b, open_time_ms=t) for b, t in zip(bars[(i * 37) % 1000:], times[:HISTORY],
                                                                              strict=False)], 60_000) for i in range(n)]
    batch = Batch.stack(frames)
    keys = [f"binance:S{i:04d}/USDT" for i in range(n)]
    positions = np.array([batch.volume.shape[1]], dtype=np.int64)
    point, quants = model.predict_targets(batch, keys, positions)
    spec = model.horizon_spec
    np.savez(out, point=point[:, 0], quants=quants[:, 0] if quants is not None else np.zeros(0),
             log_volume=batch.log_volume, volume=batch.volume, levels=np.array(model.quantile_levels),
             bars=np.array(spec.bars), labels=np.array([label for label, _ in spec.sums]),
             windows=np.array([k for _, k in spec.sums], dtype=np.int64))
    return out


def chunk(arrays: dict[str, Any], feeds: list[Any], topics: list[bytes]) -> tuple[list[bytes], int]:
    """One repetition: forecasts, payloads and packets of every feed; (payloads, packet bytes)."""
    from forecaster.mqtt_wire import publish_packet
    from forecaster.payload import Prediction, encode_all
    from forecaster.predictor import forecasts_from_log

    point, quants, spec, levels = arrays["point"], arrays["quants"], arrays["spec"], arrays["levels"]
    if spec.multi:
        forecasts = forecasts_from_log(point[:, 0], None if quants is None else quants[:, 0], levels,
                                       arrays["log_volume"], arrays["volume"], (point, quants, spec))
    else:
        forecasts = forecasts_from_log(point[:, 0], None if quants is None else quants[:, 0], levels,
                                       arrays["log_volume"], arrays["volume"])
    open_ms = 1_700_000_000_000
    last = arrays["last"]
    predictions = [Prediction(feed=feed, open_time_ms=open_ms + 60_000, last_bar_ms=open_ms, last_volume=v,
                              volume=fc.volume, quantiles=fc.quantiles, model_name="lstm", model_version="1",
                              baseline=False, created_ms=open_ms + 61_000, horizons=fc.horizons, calibrated=False)
                   for feed, fc, v in zip(feeds, forecasts, last, strict=True)]
    payloads = [p for p in encode_all(predictions) if p is not None]
    packets = b"".join(publish_packet(t, p, 1, True, i + 1) for i, (t, p) in enumerate(zip(topics, payloads,
                                                                                            strict=True)))
    return payloads, len(packets)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--reps", type=int, default=20, help="repetitions measured (0: set-up only)")
    parser.add_argument("--one-step", action="store_true", help="a model of the next bar only")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "volcast-cpu-models")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose forecaster is measured")
    args = parser.parse_args()
    sys.path.insert(0, str(args.root.resolve()))
    path = make_arrays(args.cache, args.symbols, args.one_step)

    from forecaster.horizons import Horizons
    from volcast.keys import Feed

    raw = np.load(path)
    spec = Horizons(int(raw["bars"]), tuple(zip([str(x) for x in raw["labels"]],
                                                 [int(k) for k in raw["windows"]], strict=True)))
    arrays: dict[str, Any] = {
        "point": raw["point"], "quants": raw["quants"] if raw["quants"].size else None, "spec": spec,
        "levels": [float(q) for q in raw["levels"]], "log_volume": raw["log_volume"], "volume": raw["volume"],
        "last": raw["volume"][:, -1].tolist()}
    feeds = [Feed("binance", f"S{i:04d}/USDT", 60_000) for i in range(args.symbols)]
    topics = [len(t).to_bytes(2, "big") + t for t in (f"volcast/binance/S{i:04d}-USDT/1m/forecast".encode()
                                                     for i in range(args.symbols))]
    payloads, wire = chunk(arrays, feeds, topics)  # warm: the caches every worker has filled
    cpu: list[float] = []
    for _ in range(args.reps):
        started = time.thread_time()
        chunk(arrays, feeds, topics)
        cpu.append(time.thread_time() - started)
    sizes = [len(p) for p in payloads]
    result = {"symbols": args.symbols, "one_step": args.one_step, "reps": args.reps,
              "chunk_cpu_ms_best": round(min(cpu) * 1000, 2) if cpu else None,
              "chunk_cpu_ms_median": round(statistics.median(cpu) * 1000, 2) if cpu else None,
              "payload_bytes_mean": round(statistics.fmean(sizes), 1), "payload_bytes_max": max(sizes),
              "packet_bytes": wire}
    print(orjson.dumps(result).decode() if args.json else orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
