"""Failover of a Redis Cluster master under live services, shared by tests/test_cluster_failover.py
and benchmarks/scale.py: the real `volcast stream` and `volcast forecast` as processes on a local
cluster of its own (3 masters, 3 replicas), the simulator replaying real trades, and kill -9 of the
master holding a feed's hash slot while bars close and forecasts go out.

``run_failover`` returns what the test asserts and the benchmark reports: per feed the bars lost
(an offline bar's open time missing in Redis) and wrong (a bar whose values differ from the
offline one, or a gap), the statuses, the forecasts per bar (several must be identical), and the
seconds from the kill to the cluster promoting the replica and to the feed's next bar in Redis.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import yaml
from cluster import LocalCluster
from stream_harness import (
    PATIENCE_S,
    StreamEntries,
    redis_bars,
    stream_settings,
    streamed_to_the_end,
    unique_prefix,
    write_windows,
)
from worker_harness import listening

from forecaster.payload import Prediction
from streamer.simulator.server import ReplayServer
from streamer.simulator.tape import load_tape
from volcast.bar import BarStatus
from volcast.connections import redis_client
from volcast.keys import Feed, RedisKeys

ROOT = Path(__file__).resolve().parent.parent
SHARDS = 3


@dataclass
class FailoverResult:
    killed_port: int
    promoted_s: float  # kill to a replica serving the dead master's slots
    recovered_s: float  # kill to the killed feed's next bar in Redis
    # open times: BTC/USDT's last bar in Redis at the kill, and its newest at the recovery (the
    # bars that closed during the failover are after the first, up to the second)
    outage: tuple[int, int] = (0, 0)
    bars: dict[str, int] = field(default_factory=dict)  # offline bars per feed
    lost: dict[str, list[int]] = field(default_factory=dict)  # open times missing in Redis
    extra: dict[str, list[int]] = field(default_factory=dict)  # open times in Redis, not offline
    wrong: dict[str, list[tuple[Any, Any]]] = field(default_factory=dict)  # (streamed, offline)
    statuses: dict[str, dict[str, int]] = field(default_factory=dict)
    unforecast: dict[str, list[int]] = field(default_factory=dict)  # bars with no recorded forecast
    # bars whose forecast was not seen over MQTT: by design the publisher sends only the newest
    # unpublished forecast of a topic (a backlog after the failover coalesces), so informative only
    not_on_mqtt: dict[str, list[int]] = field(default_factory=dict)
    unannounced: dict[str, list[int]] = field(default_factory=dict)  # bars with no bar-closed event
    conflicting: dict[str, list[int]] = field(default_factory=dict)  # bars with two different ones
    republished: int = 0  # identical forecasts published again
    # events the forecaster counted ``superseded`` (forecaster/late_events.py): a bar's event that
    # came after a later bar of its feed was forecast; each unforecast bar must be one of them
    superseded: int = 0
    exits: dict[str, int | None] = field(default_factory=dict)

    @property
    def unforecast_outside_outage(self) -> dict[str, list[int]]:
        low, high = self.outage
        return {name: [t for t in times if not low < t <= high] for name, times in self.unforecast.items()}

    @property
    def bars_lost(self) -> int:
        return sum(len(v) for v in self.lost.values())

    @property
    def bars_doubled(self) -> int:
        # A bar's stream entry id is its open time, so Redis cannot hold one twice; what could
        # double is a bar written beside the offline ones (a shifted or split bar): counted here.
        return sum(len(v) for v in self.extra.values())


def master_of(cluster: LocalCluster, key: str) -> int:
    """The port of the master serving ``key``'s hash slot, as the cluster says."""
    alive = [p for p in cluster.ports if cluster.processes[p].poll() is None]
    slot = int(cluster.cli(alive[0], "cluster", "keyslot", key).strip())
    for line in cluster.cli(alive[0], "cluster", "nodes").splitlines():
        parts = line.split()
        if "master" not in parts[2] or "fail" in parts[2]:
            continue
        for spec in parts[8:]:
            if spec.startswith("["):
                continue
            low, _, high = spec.partition("-")
            if int(low) <= slot <= int(high or low):
                return int(parts[1].split(":")[1].split("@")[0])
    raise RuntimeError(f"no master serves slot {slot}")


async def _until(check: Any, what: str, timeout_s: float = PATIENCE_S) -> float:
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"{what} within {timeout_s:.0f} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


def _volcast(config: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    env = {**os.environ, "VOLCAST_BINANCE_API_KEY": "simulator"}
    return subprocess.Popen([sys.executable, "-m", "volcast.cli", *args, "--config", str(config)],
                            cwd=ROOT, env=env, stdout=handle, stderr=handle)


async def run_failover(directory: Path, cluster: LocalCluster, *, seconds: float = 40, speed: float = 2,
                       kill_after_s: float = 6) -> FailoverResult:
    """Stream ``seconds`` of the three test tapes at ``speed`` with one forecaster, kill -9 the master
    of BTC/USDT's slot ``kill_after_s`` of replay in, and compare everything at the end."""
    files = write_windows(directory, seconds)
    tapes = [load_tape(f) for f in files]
    prefix = unique_prefix()
    keys = RedisKeys(prefix)
    nodes = [f"127.0.0.1:{p}" for p in cluster.ports]
    redis_section = {"url": cluster.url, "cluster": True, "cluster_nodes": nodes[1:], "event_shards": SHARDS}
    async with ReplayServer(tapes, speed=speed, start_on_subscribe=True) as server:
        settings = stream_settings(
            server, [t.symbol for t in tapes], prefix, redis=redis_section,
            mqtt={"url": "mqtt://127.0.0.1:1883", "topic_prefix": prefix},
            model={"look_back": 8, "hidden": 4, "features": ["log_volume", "time_of_day"]},
            refit={"model_dir": str(directory / "models")},
            forecaster={"claim_idle": "1s"},
        )
        raw = settings.model_dump(mode="json", include={"exchanges", "bars", "streamer", "redis", "mqtt", "model",
                                                        "refit", "forecaster"})
        config = directory / "failover.yml"
        config.write_text(yaml.safe_dump(raw), encoding="utf-8")
        btc = Feed("binance", "BTC/USDT", 1000)
        processes: dict[str, subprocess.Popen[bytes]] = {}
        async with redis_client(settings.redis) as redis, listening(settings) as listener:
            try:
                processes["forecast"] = _volcast(config, directory / "forecast.log", "-v", "forecast")
                # the forecaster reading (its imports take seconds) before the replay starts: the
                # kill then falls on running services, not on one still connecting
                await _until(lambda: _reading(redis, keys, settings.forecaster.group), "the forecaster reading")
                processes["stream"] = _volcast(config, directory / "stream.log", "stream")
                await _until(lambda: _has_bar_from(redis, keys, btc, server.timeline.first_ms + kill_after_s * 1000),
                             "BTC/USDT's bars reach the kill time")
                victim = master_of(cluster, keys.bars(btc))
                last = cast(StreamEntries, await redis.xrevrange(keys.bars(btc), count=1))
                before = int(last[0][0].decode().split("-")[0])
                cluster.processes[victim].send_signal(signal.SIGKILL)
                cluster.processes[victim].wait(30)
                killed = time.monotonic()
                promoted_s = await _until(lambda: _promoted(cluster, keys.bars(btc), victim), "a replica promoted")
                recovered_s = await _until(lambda: _has_bar_from(redis, keys, btc, before + 1000),
                                           "BTC/USDT's next bar after the failover")
                recovered_s = time.monotonic() - killed
                last = cast(StreamEntries, await redis.xrevrange(keys.bars(btc), count=1))
                outage = (before, int(last[0][0].decode().split("-")[0]))
                expected = await streamed_to_the_end(redis, keys, server, tapes, files)
                result = FailoverResult(victim, promoted_s, recovered_s, outage)
                streamed = {feed: await redis_bars(redis, keys, feed) for feed in expected}
                announced = {feed: await _announced(redis, keys, feed) for feed in expected}
                await _wait_forecasts(redis, keys, expected)
                recorded = {feed: await _recorded(redis, keys, feed) for feed in expected}
                result.superseded = int(await redis.hget(keys.forecaster(), "superseded_events") or 0)
            finally:
                for process in processes.values():
                    if process.poll() is None:
                        process.send_signal(signal.SIGTERM)
                        try:
                            process.wait(60)
                        except subprocess.TimeoutExpired:
                            process.kill()
                            process.wait(10)
        result.exits = {name: p.returncode for name, p in processes.items()}
        _compare(result, expected, streamed, listener.received)
        result.not_on_mqtt, result.unforecast = result.unforecast, {
            f.symbol: [b.open_time_ms for b in bars if b.open_time_ms not in recorded[f]]
            for f, bars in expected.items()}
        result.unannounced = {f.symbol: sorted({b.open_time_ms for b in bars} - announced[f])
                              for f, bars in expected.items()}
    return result


async def _reading(redis: Any, keys: RedisKeys, group: str) -> bool:
    try:
        for stream in keys.event_streams(1000, SHARDS):
            if not await redis.xinfo_consumers(stream, group):
                return False
    except Exception:  # no stream or group yet
        return False
    return True


async def _recorded(redis: Any, keys: RedisKeys, feed: Feed) -> set[int]:
    """The bars the feed's predictions stream holds a forecast made on (its ids: the predicted
    bar's open time, one interval after the bar the forecast was made on)."""
    entries = await redis.xrange(keys.predictions(feed))
    return {int(i.decode().split("-")[0]) - feed.interval_ms for i, _ in entries}


async def _announced(redis: Any, keys: RedisKeys, feed: Feed) -> set[int]:
    """The open times of the feed's bar-closed events (its shard also holds other feeds')."""
    entries = await redis.xrange(keys.feed_events(feed, SHARDS))
    return {int(f[b"open_time_ms"]) for _, f in entries if f[b"symbol"] == feed.symbol.encode()}


async def _has_bar_from(redis: Any, keys: RedisKeys, feed: Feed, open_time_ms: float) -> bool:
    try:
        last = await redis.xrevrange(keys.bars(feed), count=1)
    except Exception:  # the test's own client during the failover: asked again
        return False
    return bool(last) and int(last[0][0].decode().split("-")[0]) >= open_time_ms


async def _promoted(cluster: LocalCluster, key: str, victim: int) -> bool:
    """Another node serves ``key``'s slot (the survivors marked the victim failed and its replica won)."""
    try:
        return await asyncio.to_thread(master_of, cluster, key) != victim
    except RuntimeError:  # marked failed, the replica not elected yet: nobody serves the slot
        return False


async def _wait_forecasts(redis: Any, keys: RedisKeys, expected: dict[Feed, Any], timeout_s: float = 60) -> None:
    """Until every offline bar has a forecast recorded (or the timeout: then the test says which)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = True
        for feed, bars in expected.items():
            done = done and {b.open_time_ms for b in bars} <= await _recorded(redis, keys, feed)
        if done:
            return
        await asyncio.sleep(0.1)


def _compare(result: FailoverResult, expected: dict[Feed, Any], streamed: dict[Feed, Any],
             received: list[Prediction]) -> None:
    by_bar: dict[tuple[str, int], list[Prediction]] = defaultdict(list)
    for p in received:
        by_bar[(p.feed.symbol, p.last_bar_ms)].append(p)
    for feed, offline in expected.items():
        name = feed.symbol
        first, last = offline[0].open_time_ms, offline[-1].open_time_ms
        got = {b.open_time_ms: b for b in streamed[feed] if first <= b.open_time_ms <= last}
        want = {b.open_time_ms: b for b in offline}
        result.bars[name] = len(want)
        result.lost[name] = sorted(set(want) - set(got))
        result.extra[name] = sorted(set(got) - set(want))
        result.wrong[name] = []
        result.statuses[name] = defaultdict(int)
        for t, bar in got.items():
            result.statuses[name][bar.status.value] += 1
            if t not in want:
                continue
            # exact values; the status may say ``backfilled`` where the offline one is complete
            # (the bar's trades came over REST after the failover), never ``gap``
            honest = bar.status in (want[t].status, BarStatus.BACKFILLED)
            if replace(bar, status=want[t].status) != want[t] or not honest:
                result.wrong[name].append((bar, want[t]))
        result.statuses[name] = dict(result.statuses[name])
        result.unforecast[name] = [t for t in sorted(want) if not by_bar.get((name, t))]
        result.conflicting[name] = []
        for t in sorted(want):
            published = by_bar.get((name, t), [])
            if any(p != published[0] for p in published[1:]):
                result.conflicting[name].append(t)
            result.republished += max(0, len(published) - 1)


__all__ = ["FailoverResult", "master_of", "run_failover", "unique_prefix"]
