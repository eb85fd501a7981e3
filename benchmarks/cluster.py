"""What a Redis Cluster costs volcast's writes, against the single Redis, in one run.

    .venv/bin/python benchmarks/cluster.py --json [--rounds 3] [--bars 20000] [--feeds 1000]

Starts a local cluster (tests/cluster.py: six redis-server, three masters) beside the shared Redis
on 127.0.0.1:6379, and measures on each:

1. Bar writes: ``--bars`` closed bars of 100 feeds through ``BarStore.write_pending``. One node: one
   Lua script per bar and its event. Cluster: the bar script, then the events, then the announced
   marks (streamer/announce.py), with 4 event shards. bars/s and this process's CPU seconds per
   1000 bars; ``bars_ratio`` = cluster / single (throughput), ``bars_cpu_ratio`` (CPU per bar).
   ``redis.wait_replicas`` (cluster only: the shared Redis has no replica): the same bars on the
   cluster with ``WAIT 1`` after each batch on every master it wrote to (streamer/replica_wait.py),
   in whole batches (``wait_bars_ratio`` = with / without) and as a streamer writes them live, one
   boundary of 100 feeds' bars at a time (``boundary_ms``: median ms per boundary, without and with).
   The store's figures mix in everything else a batch does; ``wait_pipeline_ms`` isolates the
   WAIT: a pipeline of 100 XADDs to one master, with and without ``WAIT 1`` after them, in turns
   (median and p90 of 400).
2. Record writes: one boundary of ``--feeds`` feeds' bookkeeping (a prediction stream entry and
   the latest-prediction hash per feed, about ten fields each) through ``Recorder.apply``. One
   node: one script call per 1000 writes; cluster: one per hash slot (per feed). ms per boundary
   and CPU ms; ratios as above.

Best of ``--rounds`` (the machine is shared: the best is the least disturbed). Every key is under a
random prefix, deleted afterwards; the cluster is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from cluster import start_cluster  # noqa: E402

from forecaster.recorder import Recorder, Write  # noqa: E402
from streamer.replica_wait import ReplicaWait  # noqa: E402
from streamer.store import BarStore  # noqa: E402
from volcast.backoff import Backoff  # noqa: E402
from volcast.bar import Bar, BarStatus  # noqa: E402
from volcast.connections import redis_client  # noqa: E402
from volcast.keys import Feed, RedisKeys  # noqa: E402
from volcast.settings import RedisSettings  # noqa: E402

T0 = 1_700_000_000_000
SHARDS = 4


def _bar(open_time_ms: int) -> Bar:
    price, one = Decimal("100.5"), Decimal("0.25")
    return Bar(open_time_ms=open_time_ms, open=price, high=price, low=price, close=price, volume=one,
               quote_volume=price * one, trades=3, buy_volume=one, sell_volume=Decimal("0"), vwap=price,
               first_trade_id=open_time_ms, last_trade_id=open_time_ms + 2, status=BarStatus.COMPLETE)


def _cpu() -> float:
    return time.process_time()  # this process: the client side of the writes (the servers' is apart)


async def _clean(settings: RedisSettings) -> None:
    async with redis_client(settings) as redis:
        keys = [k async for k in redis.scan_iter(match=f"{settings.key_prefix}:*", count=1000)]
        for lo in range(0, len(keys), 1000):
            await redis.delete(*keys[lo:lo + 1000])


async def bar_writes(settings: RedisSettings, count: int, *, boundaries: bool = False) -> tuple[float, float]:
    """(bars/s, CPU s per 1000 bars) of ``count`` bars over 100 feeds through the store's writer, all
    queued at once (batches of 500); with ``boundaries`` 100 at a time, as bars close live, and
    (median ms per boundary after the first, which reads every feed's last bar; CPU s per 1000 bars)."""
    keys = RedisKeys(settings.key_prefix)
    feeds = [Feed("bench", f"S{i}/USDT", 1000) for i in range(100)]
    async with redis_client(settings) as redis:
        waits = ReplicaWait(redis, settings.wait_replicas, settings.wait_timeout) if settings.wait_replicas else None
        store = BarStore(redis, keys, retention_bars=100_000, buffer_bars=count + 1, backoff=Backoff(0.1, 1.0),
                         event_shards=settings.event_shards, replica_wait=waits)
        step = 100 if boundaries else count
        each: list[float] = []
        cpu, start = _cpu(), time.perf_counter()
        for lo in range(0, count, step):
            for k in range(lo, min(lo + step, count)):
                store.put(feeds[k % 100], _bar(T0 + (k // 100) * 1000))
            began = time.perf_counter()
            await store.write_pending()
            each.append(time.perf_counter() - began)
        wall, used = time.perf_counter() - start, _cpu() - cpu
        assert store.counters.bars_written == count, store.counters
        if waits is not None:
            assert waits.counters.waits > 0 and waits.counters.timeouts == 0, waits.counters
        for stream in keys.event_streams(1000, settings.event_shards):
            await redis.delete(stream)
    await _clean(settings)
    if boundaries:
        return statistics.median(each[1:]) * 1000, used / count * 1000
    return count / wall, used / count * 1000


async def wait_pipeline(settings: RedisSettings, pipelines: int = 400) -> dict[str, dict[str, float]]:
    """ms of a pipeline of 100 XADDs to one master, without and with WAIT 1 after them, in turns."""
    key = f"{settings.key_prefix}:{{wait}}:x"
    times: dict[str, list[float]] = {"without": [], "with": []}
    async with redis_client(settings) as redis:
        node = redis.get_node_from_key(key)  # type: ignore[attr-defined]
        for k in range(pipelines):
            wait = k % 2 == 1
            pipe = redis.pipeline(transaction=False)
            for _ in range(100):
                pipe.xadd(key, {"bar": "x" * 200}, maxlen=10_000, approximate=True)
            if wait:
                pipe.execute_command("WAIT", 1, 5_000, target_nodes=node)
            start = time.perf_counter()
            replies = await pipe.execute()
            times["with" if wait else "without"].append((time.perf_counter() - start) * 1000)
            assert not wait or replies[-1] == 1, replies[-1]
        await redis.delete(key)
    out = {}
    for name, all_ms in times.items():
        ms = sorted(all_ms[10:])  # the first ones warm the connection up
        out[name] = {"median": round(statistics.median(ms), 2), "p90": round(ms[int(0.9 * len(ms))], 2)}
    return out


async def record_writes(settings: RedisSettings, feeds: int) -> tuple[float, float]:
    """(ms, CPU ms) of one boundary's bookkeeping for ``feeds`` feeds through ``Recorder.apply``."""
    keys = RedisKeys(settings.key_prefix)
    writes: list[Write] = []
    for i in range(feeds):
        feed = Feed("bench", f"S{i}/USDT", 60_000)
        fields = [x for name in ("volume", "q10", "q50", "q90", "last_volume", "model_version", "json",
                                 "created_ms", "open_time_ms", "last_bar_ms") for x in (name, "12.5")]
        writes.append(["x", keys.predictions(feed), f"{T0}-0", *fields])
        writes.append(["h", keys.prediction(feed), *fields])
    async with redis_client(settings) as redis:
        recorder = Recorder(redis, keys, kept=10_000, score_window=100)
        await recorder.apply(writes[:2])  # the script loaded
        cpu, start = _cpu(), time.perf_counter()
        recorded = await recorder.apply(writes)
        wall, used = time.perf_counter() - start, _cpu() - cpu
        assert recorded.writes == len(writes)
    await _clean(settings)
    return wall * 1000, used * 1000


async def measure(args: argparse.Namespace, cluster_url: str) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    load_before = [round(x, 2) for x in os.getloadavg()]
    single = RedisSettings(key_prefix=f"bench-cl-{tag}")
    on_cluster = RedisSettings(url=cluster_url, cluster=True, event_shards=SHARDS, key_prefix=f"bench-cl-{tag}")
    waiting = on_cluster.model_copy(update={"wait_replicas": 1, "wait_timeout": 5_000})
    bars: dict[str, list[tuple[float, float]]] = {"single": [], "cluster": [], "cluster_wait": []}
    boundary: dict[str, list[float]] = {"cluster": [], "cluster_wait": []}
    records: dict[str, list[tuple[float, float]]] = {"single": [], "cluster": []}
    for round_ in range(args.rounds):
        # Without and with WAIT in turns, each first every other round: no order favours either.
        pair = [("cluster", on_cluster), ("cluster_wait", waiting)]
        for name, settings in [("single", single), *(pair if round_ % 2 == 0 else pair[::-1])]:
            bars[name].append(await bar_writes(settings, args.bars))
            if name in boundary:
                ms, _ = await bar_writes(settings, args.bars // 10, boundaries=True)
                boundary[name].append(ms)
            if name in records:
                records[name].append(await record_writes(settings, args.feeds))
    best_bars = {name: (max(r for r, _ in runs), min(c for _, c in runs)) for name, runs in bars.items()}
    best_boundary = {name: min(runs) for name, runs in boundary.items()}
    pipelines = await wait_pipeline(on_cluster)
    best_records = {name: (min(w for w, _ in runs), min(c for _, c in runs)) for name, runs in records.items()}
    return {
        "bars": args.bars, "feeds": args.feeds, "rounds": args.rounds, "event_shards": SHARDS,
        "bars_per_s": {name: round(rate) for name, (rate, _) in best_bars.items()},
        "bar_cpu_s_per_1000": {name: round(cpu, 4) for name, (_, cpu) in best_bars.items()},
        "bars_ratio": round(best_bars["cluster"][0] / best_bars["single"][0], 3),
        "bars_cpu_ratio": round(best_bars["cluster"][1] / max(best_bars["single"][1], 1e-9), 3),
        "wait_bars_ratio": round(best_bars["cluster_wait"][0] / best_bars["cluster"][0], 3),
        "wait_bars_cpu_ratio": round(best_bars["cluster_wait"][1] / max(best_bars["cluster"][1], 1e-9), 3),
        "boundary_ms": {name: round(ms, 2) for name, ms in best_boundary.items()},
        "wait_boundary_ratio": round(best_boundary["cluster_wait"] / best_boundary["cluster"], 3),
        "wait_pipeline_ms": pipelines,
        "wait_pipeline_ratio": round(pipelines["with"]["median"] / pipelines["without"]["median"], 3),
        "record_ms": {name: round(ms, 1) for name, (ms, _) in best_records.items()},
        "record_cpu_ms": {name: round(cpu, 1) for name, (_, cpu) in best_records.items()},
        "record_ratio": round(best_records["cluster"][0] / best_records["single"][0], 3),
        "record_cpu_ratio": round(best_records["cluster"][1] / max(best_records["single"][1], 1e-9), 3),
        "load": [round(x, 2) for x in os.getloadavg()],
        "load_before": load_before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bars", type=int, default=20_000, help="bars written per round (100 feeds)")
    parser.add_argument("--feeds", type=int, default=1000, help="feeds of the recorded boundary")
    args = parser.parse_args()
    cluster = start_cluster()
    try:
        result = asyncio.run(measure(args, cluster.url))
    finally:
        cluster.stop()
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
