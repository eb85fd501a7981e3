"""The bookkeeping's Redis script with payloads as arguments of their own, against the same writes
with the payloads escaped into the script's JSON (how they went before 2026-12-06), in turns in
one run: the Redis server's time per call (INFO commandstats) and the worker's wall time per call.

Per feed, the writes a 60-horizon boundary makes (forecaster/recorder.py): the prediction's
stream entry and latest hash (each with its payload), the realised entry, the scores hash and the
calibration hash (with its packed state). The payload is a schema-2-sized JSON document (about
2.2 kB: 60 horizon volumes and their quantiles) and the packed state 4 kB of base64, as the
worker's; the other fields are the worker's names with typical values.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/record_script.py --json [--feeds 1000] [--rounds 10]
        [--redis redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import time
import uuid
from typing import Any

import orjson

from forecaster.recorder import Recorder, Write
from volcast.connections import redis_client
from volcast.keys import Feed, RedisKeys
from volcast.settings import RedisSettings

MINUTE = 60_000
T0 = 1_700_000_040_000


def _payload(i: int) -> bytes:
    return orjson.dumps({
        "schema": 2, "feed": f"binance:S{i}/USDT:1m", "open_time_ms": T0, "volume": 1234.5678 + i,
        "quantiles": {"0.1": 800.125, "0.5": 1200.5, "0.9": 1900.75},
        "horizons": {"volume": [1234.5678 + i + h for h in range(60)],
                     "quantiles": [[800.125 + h, 1200.5 + h, 1900.75 + h] for h in range(60)],
                     "sums": {"5m": [6000.5, 4000.25, 9000.75], "15m": [18000.5, 12000.25, 27000.75],
                              "1h": [72000.5, 48000.25, 108000.75]}}})


def boundary_writes(keys: RedisKeys, feeds: list[Feed], step: int, inline: bool) -> list[Write]:
    """One boundary's writes; ``inline``: every payload and state as text in the JSON."""
    packed = base64.b64encode(bytes(range(256)) * 12)[:4032]  # 48 bytes x 63 targets, as base64
    out: list[Write] = []
    bar = T0 + step * MINUTE
    for i, feed in enumerate(feeds):
        payload = _payload(i)
        value: str | bytes = payload.decode() if inline else payload
        fields: list[str | bytes] = ["open_time_ms", str(bar + MINUTE), "last_bar_ms", str(bar), "last_volume",
                                     "1111.25", "volume", "1234.5678", "model_name", "lstm", "model_version", "7",
                                     "baseline", "0", "created_ms", str(bar + MINUTE + 12), "guard", "", "json", value]
        out.append(["x", keys.predictions(feed), f"{bar + MINUTE}-0", *fields])
        out.append(["h", keys.prediction(feed), *fields])
        out.append(["x", keys.realised(feed), f"{bar}-0", "open_time_ms", str(bar), "predicted", "1200.5",
                    "actual", "1111.25", "naive", "1000.0", "error_log", "0.0771", "model_version", "7",
                    "low", "800.125", "high", "1900.75", "covered", "1"])
        out.append(["h", keys.scores(feed), "n", "60", "rmse_log", "0.81", "mae", "310.5", "naive_mae", "402.25",
                    "mase", "0.77", "from_ms", str(bar - 59 * MINUTE), "to_ms", str(bar), "banded", "60",
                    "covered", "48", "coverage_80", "0.8", "updated_ms", str(bar + MINUTE + 12)])
        out.append(["h", keys.calibration(feed), "c_low", "0.01", "c_high", "-0.02", "n", "60", "to_ms", str(bar),
                    "packed", packed.decode() if inline else bytes(packed)])
    return out


async def _evalsha_usec(redis: Any) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("usec", 0))


async def measure(url: str, n: int, rounds: int) -> dict[str, Any]:
    keys = RedisKeys(f"bench-rec-{uuid.uuid4().hex[:8]}")
    feeds = [Feed("binance", f"S{i}/USDT", MINUTE) for i in range(n)]
    server: dict[str, list[float]] = {"inline": [], "arguments": []}
    wall: dict[str, list[float]] = {"inline": [], "arguments": []}
    async with redis_client(RedisSettings(url=url)) as redis:
        recorder = Recorder(redis, keys, kept=100, score_window=60)
        try:
            for step in range(rounds + 1):  # the first round loads the script and makes the keys
                for variant in ("inline", "arguments") if step % 2 else ("arguments", "inline"):
                    writes = boundary_writes(keys, feeds, 2 * step + (variant == "arguments"), variant == "inline")
                    before = await _evalsha_usec(redis)
                    started = time.perf_counter()
                    await recorder.apply(writes)
                    took = time.perf_counter() - started
                    if step:
                        server[variant].append((await _evalsha_usec(redis) - before) / 1000)
                        wall[variant].append(took * 1000)
        finally:
            for lo in range(0, n, 100):
                await redis.delete(*[key for feed in feeds[lo:lo + 100] for key in (
                    keys.predictions(feed), keys.prediction(feed), keys.realised(feed), keys.scores(feed),
                    keys.calibration(feed))])
    out: dict[str, Any] = {"feeds": n, "rounds": rounds, "writes": 5 * n}
    for variant in ("inline", "arguments"):
        out[f"{variant}_server_ms"] = round(statistics.median(server[variant]), 2)
        out[f"{variant}_wall_ms"] = round(statistics.median(wall[variant]), 2)
    out["server_ratio"] = round(out["arguments_server_ms"] / out["inline_server_ms"], 3)
    out["wall_ratio"] = round(out["arguments_wall_ms"] / out["inline_wall_ms"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument("--feeds", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    result = asyncio.run(measure(args.redis, args.feeds, args.rounds))
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            print(f"{name:>20}: {value}")


if __name__ == "__main__":
    main()
