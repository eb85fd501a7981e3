"""The worker survives a broker restart, and kill -9 of one of two workers skips no bar."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from worker_harness import (
    MINUTE,
    clear_retained,
    close_bars,
    delete_prefix,
    feeds_of,
    free_port,
    listening,
    mosquitto,
    raw_settings_for,
    settings_for,
    symbol_bars,
    worker,
    write_bars,
)

from volcast.connections import redis_client
from volcast.keys import RedisKeys
from volcast.settings import settings_from_mapping

HISTORY = 300


async def pending(redis: object, keys: RedisKeys, group: str, shards: int = 1) -> int:
    total = 0
    for stream in keys.event_streams(MINUTE, shards):
        info = await redis.xpending(stream, group)  # type: ignore[attr-defined]
        total += int(info["pending"])
    return total


async def test_broker_restart_is_survived_and_the_kept_prediction_published(tmp_path: Path,
                                                                             redis_config: dict[str, Any]) -> None:
    port = free_port()
    settings = settings_for(tmp_path / "models", mqtt_url=f"mqtt://127.0.0.1:{port}", redis=redis_config)
    keys = RedisKeys(settings.redis.key_prefix)
    feeds = feeds_of(settings)
    series = {feed: symbol_bars(i) for i, feed in enumerate(feeds)}
    broker = contextlib.ExitStack()
    try:
        async with redis_client(settings.redis) as redis:
            for feed in feeds:
                await write_bars(redis, keys, feed, series[feed][:HISTORY])
            broker.enter_context(mosquitto(port, tmp_path))
            async with worker(settings):
                async with listening(settings) as listener:
                    await close_bars(redis, keys, [(f, series[f][HISTORY]) for f in feeds])
                    await listener.wait_for(len(feeds))
                broker.close()
                # The broker is down: the worker goes on forecasting, keeps the predictions, acks nothing.
                await close_bars(redis, keys, [(f, series[f][HISTORY + 1]) for f in feeds])
                for _ in range(100):
                    if (await redis.hgetall(keys.forecaster())).get(b"predictions") == b"6":
                        break
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.3)
                assert await pending(redis, keys, settings.forecaster.group) == len(feeds)
                broker.enter_context(mosquitto(port, tmp_path))
                async with listening(settings) as listener:
                    got = await listener.wait_for(len(feeds), timeout=60)
                    assert {p.last_bar_ms for p in got} == {series[feeds[0]][HISTORY + 1].open_time_ms}
                    for _ in range(100):
                        if await pending(redis, keys, settings.forecaster.group) == 0:
                            break
                        await asyncio.sleep(0.05)
                    assert await pending(redis, keys, settings.forecaster.group) == 0
                    # ...and goes on with the next bar.
                    await close_bars(redis, keys, [(f, series[f][HISTORY + 2]) for f in feeds])
                    await listener.wait_for(2 * len(feeds))
    finally:
        broker.close()
        await delete_prefix(settings)


def start_worker(config: Path, name: str) -> subprocess.Popen[bytes]:
    log = (config.parent / f"worker-{name}.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "volcast.cli", "-v", "forecast", "--config", str(config),
                             "--consumer", name], stdout=log, stderr=log)


async def test_kill_9_of_one_of_two_workers_skips_no_bar(tmp_path: Path, redis_mode: str,
                                                         redis_config: dict[str, Any]) -> None:
    # In-order recovery needs claim_idle < the bar interval (30s vs 1m by default): the dead
    # worker's event is claimed before the feed's next bar closes. Here bars close every 1.2 s.
    # On the cluster the events are in 3 shards: the dead worker's are claimed shard by shard.
    shards = 3 if redis_mode == "cluster" else 1
    raw = raw_settings_for(tmp_path / "models", forecaster={"claim_idle": "500ms"},
                           redis={**redis_config, "event_shards": shards})
    settings = settings_from_mapping(raw, env={})
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump(raw))
    # Worker a cannot reach its broker, so whatever it reads stays pending with it until it dies:
    # the bars it held are published only if b claims them.
    stuck = tmp_path / "stuck.yml"
    stuck.write_text(yaml.safe_dump({**raw, "mqtt": {**raw["mqtt"], "url": f"mqtt://127.0.0.1:{free_port()}"}}))
    keys = RedisKeys(settings.redis.key_prefix)
    feeds = feeds_of(settings)
    series = {feed: symbol_bars(i) for i, feed in enumerate(feeds)}
    steps = 6
    workers = {"a": start_worker(stuck, "a"), "b": start_worker(config, "b")}
    try:
        async with redis_client(settings.redis) as redis, listening(settings) as listener:
            for feed in feeds:
                await write_bars(redis, keys, feed, series[feed][:HISTORY])
            streams = keys.event_streams(MINUTE, shards)
            for _ in range(600):  # both consumers reading every shard
                with contextlib.suppress(Exception):
                    if all([len(await redis.xinfo_consumers(s, settings.forecaster.group)) == 2 for s in streams]):
                        break
                await asyncio.sleep(0.05)
            held = 0
            for step in range(steps):
                await close_bars(redis, keys, [(f, series[f][HISTORY + step]) for f in feeds], shards)
                # From the third bar on, a is killed as soon as it holds events (which worker a
                # blocked read serves first is a race: with event shards, one per shard).
                if step >= 2 and not held:
                    for _ in range(100):
                        held = sum([await pending_of(redis, s, settings.forecaster.group, "a") for s in streams])
                        if held:
                            break
                        await asyncio.sleep(0.01)
                    if held or step == steps - 2:
                        os.kill(workers["a"].pid, signal.SIGKILL)
                        workers["a"].wait(10)
                await asyncio.sleep(1.2)
            assert held > 0  # a really died holding events
            try:
                await listener.wait_for(steps * len(feeds), timeout=20)
            finally:
                print(sorted((p.feed.symbol, p.last_bar_ms) for p in listener.received))
            for feed in feeds:
                got = [p.last_bar_ms for p in listener.received if p.feed == feed]
                assert got == [series[feed][HISTORY + s].open_time_ms for s in range(steps)], feed
            for _ in range(100):
                if await pending(redis, keys, settings.forecaster.group, shards) == 0:
                    break
                await asyncio.sleep(0.05)
            assert await pending(redis, keys, settings.forecaster.group, shards) == 0
            assert workers["b"].poll() is None
    finally:
        for process in workers.values():
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
                process.terminate()
                process.wait(10)
        await delete_prefix(settings)
        await clear_retained(settings)


async def pending_of(redis: object, stream: str, group: str, consumer: str) -> int:
    rows = await redis.xpending_range(stream, group, min="-", max="+", count=1000,  # type: ignore[attr-defined]
                                      consumername=consumer)
    return len(rows)
