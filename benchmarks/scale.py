"""Scaling out on a real local Redis Cluster (issue 14): streamers, forecasters, takeover, failover.

    .venv/bin/python benchmarks/scale.py --json [--feeds 20] [--trades 30000] [--gap-ms 1] [--no-pin] [--rounds 2]
                                                [--fc-feeds 200] [--boundaries 300] [--pace-ms 150] [--claim-idle 30]
                                                [--forecasters-only]

Starts its own cluster (six `redis-server`, three masters and three replicas, tests/cluster.py)
and runs, on it, one after the other:

- ``streamers``: benchmarks/streamers.py's run (``--feeds`` x ``--trades`` synthetic trades, at
  ``--gap-ms`` apart, the flood server on its own CPU unless ``--no-pin``) with one `volcast stream`
  (no leases) and with two sharing the feeds through leases (the default 20 feeds are 4
  connections, 2 per streamer, as a deployment of many feeds; at 1 ms apart, 20,000 trades/s, one
  streamer uses about a third of a core here: the load a second streamer is started for; at
  ``--gap-ms 5`` each process's own fixed cost weighs more): trades/s (wall) and trades per
  CPU-second of the streamer processes, best of ``--rounds``;
- ``forecasters``: one and two `volcast forecast` processes (3 event shards, the fallback
  baselines: no model is trained here) on ``--fc-feeds`` feeds of real 1-minute volumes
  (tests/data), ``--boundaries`` bar boundaries closed one after the other, each ``--pace-ms``
  after every feed's forecast of the previous one arrived over MQTT (a deployment's boundaries are
  a minute apart; back to back, ``--pace-ms 0``, two workers with the cluster and this driver want
  more than two cores, and their CPU seconds grow with the contention: ``machine_busy`` gives the
  machine's share in use): feeds forecast/s (wall, the pauses included) and per CPU-second of
  the forecaster processes, in the steady state: the CPU seconds are read after two warm-up
  boundaries a second apart (imports, the fallback's first fit, and with two workers the split of
  the event shards between them and the reads of the histories of the feeds each one took) and
  after the last boundary's forecasts arrived; best of ``--rounds``, one and two in turn; also
  the workers' passes per boundary (each pays a boundary's fixed costs), and one worker on half
  the feeds (``1_half``), which splits a worker's CPU per boundary into a fixed part and a part
  per feed (``forecasters_cost``): two workers on N feeds cost one fixed part more than one, so
  their efficiency is (fixed + N per_feed) / (2 fixed + N per_feed), low for few feeds;
- ``takeover_s``: benchmarks/takeover.py's run (kill -9 of one of two streamers with leases);
- ``failover``: tests/failover_harness.py (kill -9 of the master holding BTC/USDT's slot under
  `volcast stream` and `volcast forecast`): bars lost and doubled, seconds from the kill to the
  feed's next bar in Redis (and to the replica's promotion).

The goal: work per CPU-second with two processes at least 0.9x that of one. The machine has two
cores and also runs the flood server and the six Redis servers: the wall clock cannot show a
speed-up. Needs Mosquitto at 127.0.0.1:1883 (topics under a random prefix).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from report import print_result

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))  # before benchmarks/: its cluster.py is another module

import streamers  # noqa: E402
import takeover  # noqa: E402
from cluster import LocalCluster, start_cluster  # noqa: E402
from failover_harness import run_failover  # noqa: E402
from worker_harness import (  # noqa: E402
    MINUTE,
    close_bars,
    delete_prefix,
    feeds_of,
    listening,
    raw_settings_for,
    symbol_bars,
    write_bars,
)

from forecaster.handoffs import RECORD_DEFER_S  # noqa: E402
from volcast.connections import redis_client  # noqa: E402
from volcast.keys import RedisKeys  # noqa: E402
from volcast.settings import settings_from_mapping  # noqa: E402

SHARDS = 3
HISTORY = 300
_WAIT_S = 180.0


def _cluster_section(cluster: LocalCluster) -> dict[str, Any]:
    return {"url": cluster.url, "cluster": True, "event_shards": SHARDS,
            "cluster_nodes": [f"127.0.0.1:{p}" for p in cluster.ports[1:]]}


def _command_calls(cluster: LocalCluster) -> dict[str, int]:
    """Commands the cluster's masters have executed so far, by name (``INFO commandstats``)."""
    calls: dict[str, int] = {}
    for port in cluster.ports:
        if "role:master" not in cluster.cli(port, "info", "replication"):
            continue
        for line in cluster.cli(port, "info", "commandstats").splitlines():
            name, _, stats = line.partition(":")
            if name.startswith("cmdstat_") and stats.startswith("calls="):
                command = name.removeprefix("cmdstat_")
                calls[command] = calls.get(command, 0) + int(stats.split(",")[0].removeprefix("calls="))
    return calls


def _forecaster(config: Path, name: str) -> subprocess.Popen[bytes]:
    log = (config.parent / f"forecast-{name}.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "volcast.cli", "forecast", "--config", str(config), "--consumer",
                             name], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def _machine_ticks() -> tuple[int, int]:
    """The machine's (busy, total) CPU ticks so far, every core (/proc/stat's first line)."""
    with Path("/proc/stat").open(encoding="ascii") as stat:
        ticks = [int(x) for x in stat.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle and iowait
    return sum(ticks) - idle, sum(ticks)


async def forecasters_run(cluster: LocalCluster, workers: int, feeds: int, boundaries: int,
                          directory: Path, idle_s: float = 0.0, claim_idle_s: float = 30.0,
                          pace_s: float = 0.0) -> dict[str, Any]:
    symbols = [f"S{i}/USDT" for i in range(feeds)]
    # claim_idle sets the pool's coordination cadence (claims and the split's look at the group
    # every claim_idle / 4, the alive key every claim_idle / 3): the service's default, not the
    # tests' 1 s, which made each worker's polling 4-5x as frequent as in a deployment.
    raw = raw_settings_for(directory / "models", symbols=symbols, redis=_cluster_section(cluster),
                           forecaster={"claim_idle": f"{claim_idle_s:g}s"})
    settings = settings_from_mapping(raw, env={})
    config = directory / "forecast.yml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    keys = RedisKeys(settings.redis.key_prefix)
    feed_list = feeds_of(settings)
    paths = [symbol_bars(i) for i in range(20)]  # 20 shifts of the real series, reused
    series = {feed: paths[i % 20] for i, feed in enumerate(feed_list)}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        async with redis_client(settings.redis) as redis, listening(settings) as listener:
            for feed in feed_list:
                await write_bars(redis, keys, feed, series[feed][:HISTORY])
            processes.extend(_forecaster(config, f"w{index}") for index in range(workers))
            streams = keys.event_streams(MINUTE, SHARDS)
            deadline = time.monotonic() + _WAIT_S
            while time.monotonic() < deadline:  # every worker reading every shard
                with contextlib.suppress(Exception):
                    counts = [len(await redis.xinfo_consumers(s, settings.forecaster.group)) for s in streams]
                    if all(c == workers for c in counts):
                        break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError("the forecasters did not join the consumer group")

            async def boundary(step: int) -> None:
                # A pause before each boundary: a deployment's boundaries are an interval apart
                # (a minute), with the pool idle between them; back to back, two workers, six
                # Redis servers and this driver want more than the two cores, and their CPU
                # seconds then also count the contention (see --pace-ms).
                await asyncio.sleep(pace_s)
                await close_bars(redis, keys, [(f, series[f][HISTORY + step]) for f in feed_list], SHARDS)
                await listener.wait_for((step + 1) * feeds, timeout=_WAIT_S)

            # Warm-up, not counted: imports, the fallback's first fit, and, with two, the split of
            # the event shards (forecaster/event_reads.py): each worker takes its shards at its
            # next look at the group (every claim_idle / 4, once the other's alive key says "1":
            # up to claim_idle / 3 after its broker connected) and reads its feeds' histories at
            # the boundary after. Then the steady state, between two CPU marks.
            await boundary(0)
            await asyncio.sleep(1.0)
            if workers > 1:  # until each worker says it took its shards: a move inside the measure costs reads
                logs = [directory / f"forecast-w{index}.log" for index in range(workers)]
                deadline = time.monotonic() + _WAIT_S
                while not all(f"{workers} live worker(s)" in log.read_text(errors="replace") for log in logs):
                    if time.monotonic() > deadline:
                        raise RuntimeError("the forecasters did not split the event shards")
                    await asyncio.sleep(0.1)
            await boundary(1)
            # Boundary 1's bookkeeping, also part of the split: with two workers it waits up to
            # RECORD_DEFER_S for the feeds each one held at bar 0 and gave the other
            # (Handoffs.until_complete), then reads back those feeds' previous predictions, realised
            # errors and calibrator states, once. Measured, it was 200 feeds' reads in the two
            # workers' steady state and none in one worker's.
            await asyncio.sleep(RECORD_DEFER_S + 0.5)
            passes0 = int(await redis.hget(keys.forecaster(), "batches") or 0)
            cpu0 = sum(streamers._cpu_s(p.pid) for p in processes)
            calls0 = _command_calls(cluster)
            machine0 = _machine_ticks()
            started = time.monotonic()
            for step in range(2, boundaries + 2):
                await boundary(step)
            wall = time.monotonic() - started
            machine1 = _machine_ticks()
            each = [streamers._cpu_s(p.pid) for p in processes]
            cpu = sum(each) - cpu0
            calls1 = _command_calls(cluster)
            await asyncio.sleep(0.2)  # the last boundary's bookkeeping (it counts the passes)
            passes = int(await redis.hget(keys.forecaster(), "batches") or 0) - passes0
            idle: dict[str, Any] = {}
            if idle_s > 0:  # the same processes with no boundary to forecast: their cost of waiting
                await asyncio.sleep(5.0)  # after what follows a boundary (bookkeeping, a refit of the fallback)
                idle0 = sum(streamers._cpu_s(p.pid) for p in processes)
                await asyncio.sleep(idle_s)
                idle_cpu = sum(streamers._cpu_s(p.pid) for p in processes) - idle0
                idle = {"idle_cpu_s_per_s": round(idle_cpu / idle_s, 4)}
        done = boundaries * feeds
        return {"feeds_forecast_per_s": round(done / wall, 1), "feeds_forecast_per_cpu_s": round(done / cpu, 1),
                "cpu_s": round(cpu, 2), "wall_s": round(wall, 2), "forecasts": done,
                # Passes of the workers (one per boundary each at best): each one pays a boundary's fixed costs.
                "passes_per_boundary": round(passes / boundaries, 2),
                # The share of the machine's CPU (every core) in use during the measure: near 1,
                # the processes were waiting for a core and their CPU seconds count contention too.
                "machine_busy": round((machine1[0] - machine0[0]) / max(1, machine1[1] - machine0[1]), 3),
                # What the masters executed per boundary, this benchmark's bar writes included (the
                # same in every variant): where a worker's fixed cost per boundary goes.
                "commands_per_boundary": {c: round((n - calls0.get(c, 0)) / boundaries, 2)
                                          for c, n in sorted(calls1.items()) if n > calls0.get(c, 0)}, **idle}
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)
        await delete_prefix(settings)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()
    cluster = start_cluster()
    result: dict[str, Any] = {"streamers": {}, "forecasters": {}}
    try:
        section = _cluster_section(cluster)
        for round_ in range(0 if args.forecasters_only else args.rounds):  # best: a reconnect costs a backfill
            for count, variant in (("1", "one"), ("2", "two")):
                with tempfile.TemporaryDirectory(prefix="volcast-scale-") as directory:
                    run = await streamers.one_run(variant, args.feeds, args.trades, Path(directory), section,
                                                  pin=args.pin and len(os.sched_getaffinity(0)) > 1, gap_ms=args.gap_ms)
                print(f"round {round_ + 1} streamers {count}: {run}", file=sys.stderr)
                best = result["streamers"].get(count)
                if best is None or run["trades_per_cpu_s"] > best["trades_per_cpu_s"]:
                    result["streamers"][count] = run
        for round_ in range(args.rounds):  # one and two in turn: the machine's load drifts
            for count in ("1", "2", "1_half"):
                workers, feeds = (1, args.fc_feeds // 2) if count == "1_half" else (int(count), args.fc_feeds)
                with tempfile.TemporaryDirectory(prefix="volcast-scale-") as directory:
                    run = await forecasters_run(cluster, workers, feeds, args.boundaries, Path(directory),
                                                claim_idle_s=args.claim_idle, pace_s=args.pace_ms / 1000)
                print(f"round {round_ + 1} forecasters {count}: {run}", file=sys.stderr)
                best = result["forecasters"].get(count)
                if best is None or run["feeds_forecast_per_cpu_s"] > best["feeds_forecast_per_cpu_s"]:
                    result["forecasters"][count] = run
        if args.forecasters_only:
            return _efficiency(result, args, load_before)
        with tempfile.TemporaryDirectory(prefix="volcast-scale-") as directory:
            taken = await takeover.one_run(Path(directory), section)
        print(f"takeover: {taken}", file=sys.stderr)
        result["takeover_s"] = taken["takeover_s"]
        result["takeover"] = taken
        with tempfile.TemporaryDirectory(prefix="volcast-scale-") as directory:  # last: it kills a node
            failed = await run_failover(Path(directory), cluster)
        result["failover"] = {
            "bars_lost": failed.bars_lost, "bars_doubled": failed.bars_doubled,
            "seconds_to_recover": round(failed.recovered_s, 2), "seconds_to_promote": round(failed.promoted_s, 2),
            "bars_wrong": sum(len(v) for v in failed.wrong.values()),
            "bars_unforecast": sum(len(v) for v in failed.unforecast.values()),
            "bars_unforecast_outside_outage": sum(len(v) for v in failed.unforecast_outside_outage.values()),
            "bars_not_on_mqtt": sum(len(v) for v in failed.not_on_mqtt.values()),
            "bars_conflicting_forecasts": sum(len(v) for v in failed.conflicting.values()),
            "republished": failed.republished, "bars": sum(failed.bars.values()),
        }
        print(f"failover: {result['failover']}", file=sys.stderr)
    finally:
        cluster.stop()
        shutil.rmtree(cluster.directory, ignore_errors=True)
    return _efficiency(result, args, load_before)


def _efficiency(result: dict[str, Any], args: argparse.Namespace, load_before: tuple[float, ...]) -> dict[str, Any]:
    f1, f2 = result["forecasters"]["1"], result["forecasters"]["2"]
    result["efficiency_2_vs_1"] = {
        "forecasters": round(f2["feeds_forecast_per_cpu_s"] / f1["feeds_forecast_per_cpu_s"], 3)}
    if result["streamers"]:
        s1, s2 = result["streamers"]["1"], result["streamers"]["2"]
        result["efficiency_2_vs_1"]["streamers"] = round(s2["trades_per_cpu_s"] / s1["trades_per_cpu_s"], 3)
    result["forecasters_cost"] = _cost_model(result["forecasters"], args.fc_feeds, args.boundaries)
    result["goal"] = 0.9
    result["forecasters_pace_ms"] = args.pace_ms
    result["load_avg"] = {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]}
    return result


def _cost_model(runs: dict[str, Any], feeds: int, boundaries: int) -> dict[str, Any]:
    """A worker's CPU per boundary as fixed + per-feed parts, from one worker on ``feeds`` and on
    half as many (the same process and boundaries: what neither part counts is in both), and the
    efficiency of two workers it predicts, (fixed + N per_feed) / (2 fixed + N per_feed), at this
    run's feed count and at 1000 (every perpetual of one exchange or more; pass --fc-feeds 1000
    to measure it)."""
    full: float = runs["1"]["cpu_s"] / boundaries * 1000
    half: float = runs["1_half"]["cpu_s"] / boundaries * 1000
    per_feed = (full - half) / (feeds - feeds // 2)
    fixed = full - per_feed * feeds

    def predicted(n: int) -> float:
        return round((fixed + n * per_feed) / (2 * fixed + n * per_feed), 3)

    return {"fixed_ms_per_worker_boundary": round(fixed, 2), "per_feed_ms": round(per_feed, 4),
            f"efficiency_predicted_at_{feeds}": predicted(feeds), "efficiency_predicted_at_1000": predicted(1000)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--feeds", type=int, default=20,
                        help="flooded symbols of the streamer runs (default 20: 4 connections, 2 per streamer)")
    parser.add_argument("--trades", type=int, default=30_000, help="trades per flooded symbol (default 30000)")
    parser.add_argument("--gap-ms", type=int, default=1,
                        help="replay ms between a feed's trades in the streamer runs (default 1: 1,000 trades/s a "
                             "feed, 20,000 in all, one streamer a third of a core here: the load a second streamer "
                             "is started for; --gap-ms 5: 4,000 trades/s, where each process's own fixed cost weighs)")
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                        help="the streamer runs' flood server on CPU 0 and the streamers on the others (default on; "
                             "off on a one-CPU machine)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="streamer and forecaster runs per count; the best counts (default 2)")
    parser.add_argument("--fc-feeds", type=int, default=200, help="feeds of the forecaster runs (default 200)")
    parser.add_argument("--forecasters-only", action="store_true",
                        help="only the forecaster runs (no streamers, takeover or failover)")
    parser.add_argument("--claim-idle", type=float, default=30.0,
                        help="forecaster.claim_idle of the forecaster runs, seconds (default 30, the service's)")
    parser.add_argument("--boundaries", type=int, default=300,
                        help="bar boundaries per forecaster run (default 300: 60 measured 1-2 CPU-s and swung ±0.15)")
    parser.add_argument("--pace-ms", type=float, default=150.0,
                        help="pause before each boundary of the forecaster runs, ms (default 150, about 7 boundaries "
                             "a second: the machine was a quarter busy at 200 feeds, three fifths at 1000; 0: back "
                             "to back, the two cores oversubscribed with two workers)")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    print_result(result, args.json, 18)
    return 0


if __name__ == "__main__":
    sys.exit(main())
