"""The worker and bars that come again (forecaster/late_events.py), against real Redis (single node
and cluster) and real Mosquitto, the bars and events written by the streamer's own store: a bar
revised while the feed's next bar is open is forecast again, published as a revision on the
retained topic; a revision, or any event, of a bar older than the feed's last forecast is counted
``superseded`` and never replaces the newer retained forecast."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from stream_harness import StreamEntries
from worker_harness import (
    MINUTE,
    clear_retained,
    delete_prefix,
    feeds_of,
    listening,
    settings_for,
    symbol_bars,
    worker,
    write_bars,
)

from streamer.store import BarStore
from volcast.backoff import Backoff
from volcast.connections import redis_client
from volcast.keys import Feed, RedisKeys
from volcast.settings import Settings

HISTORY = 300


@pytest.fixture
async def settings(tmp_path: Path, redis_config: dict[str, Any]) -> AsyncIterator[Settings]:
    s = settings_for(tmp_path / "models", redis=redis_config, symbols=["NEAR/USDT"])
    yield s
    await delete_prefix(s)
    await clear_retained(s)


def _store(redis: aioredis.Redis, settings: Settings) -> BarStore:
    return BarStore(redis, RedisKeys(settings.redis.key_prefix), retention_bars=10_000, buffer_bars=100,
                    backoff=Backoff(0.01, 0.1), event_shards=settings.redis.event_shards)


async def _status(redis: aioredis.Redis, settings: Settings, field: bytes, want: bytes) -> None:
    """Until the worker's status hash says ``field`` = ``want`` (written after each boundary and by
    the heartbeat)."""
    keys = RedisKeys(settings.redis.key_prefix)
    for _ in range(600):
        if (await redis.hget(keys.forecaster(), field)) == want:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"status {field!r} never became {want!r}: {await redis.hgetall(keys.forecaster())}")


async def _acknowledged(redis: aioredis.Redis, settings: Settings) -> None:
    keys = RedisKeys(settings.redis.key_prefix)
    streams = keys.event_streams(MINUTE, settings.redis.event_shards)
    for _ in range(200):
        if not any([(await redis.xpending(s, settings.forecaster.group))["pending"] for s in streams]):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("events left pending")


async def test_a_revised_bar_is_forecast_again_as_a_revision(settings: Settings) -> None:
    [feed] = feeds_of(settings)
    bars = symbol_bars(0)
    keys = RedisKeys(settings.redis.key_prefix)
    async with redis_client(settings.redis) as redis:
        await write_bars(redis, keys, feed, bars[:HISTORY])
        store = _store(redis, settings)
        async with worker(settings), listening(settings) as listener:
            store.put(feed, bars[HISTORY])
            await store.write_pending()
            [first] = await listener.wait_for(1)
            assert (first.last_bar_ms, first.revision) == (bars[HISTORY].open_time_ms, 0)
            revised = dataclasses.replace(bars[HISTORY], volume=bars[HISTORY].volume * 3)
            store.amend(feed, revised, 1)
            await store.write_pending()
            [_, again] = await listener.wait_for(2)
            assert (again.open_time_ms, again.last_bar_ms, again.revision) == (first.open_time_ms,
                                                                                first.last_bar_ms, 1)
            assert again.last_volume == float(revised.volume) != first.last_volume
            await _status(redis, settings, b"revised_forecasts", b"1")
            store.put(feed, bars[HISTORY + 1])  # the next bar: its forecast as usual
            await store.write_pending()
            [*_, third] = await listener.wait_for(3)
            assert (third.last_bar_ms, third.revision) == (bars[HISTORY + 1].open_time_ms, 0)
            # Realised once for the bar that closed: against the revision, the forecast in force.
            await _acknowledged(redis, settings)
            realised = cast(StreamEntries, await redis.xrange(keys.realised(feed)))
            assert [(int(i.split(b"-")[0]), float(f[b"predicted"])) for i, f in realised] == [
                (bars[HISTORY + 1].open_time_ms, again.volume)]
        async with listening(settings) as late:
            [retained] = await late.wait_for(1)
            assert (retained.last_bar_ms, retained.revision) == (bars[HISTORY + 1].open_time_ms, 0)


async def test_a_late_event_or_revision_is_superseded_and_replaces_nothing(settings: Settings) -> None:
    """The failover's case (an event re-sent after the feed's next bar was forecast) and a revision
    that comes after the next bar was forecast: counted, acknowledged, not forecast, not published."""
    [feed] = feeds_of(settings)
    bars = symbol_bars(0)
    keys = RedisKeys(settings.redis.key_prefix)
    async with redis_client(settings.redis) as redis:
        await write_bars(redis, keys, feed, bars[:HISTORY])
        store = _store(redis, settings)
        async with worker(settings), listening(settings) as listener:
            for step in range(2):
                store.put(feed, bars[HISTORY + step])
                await store.write_pending()
                await listener.wait_for(step + 1)
            store.amend(feed, dataclasses.replace(bars[HISTORY], volume=bars[HISTORY].volume * 2), 1)
            await store.write_pending()
            await _status(redis, settings, b"superseded_events", b"1")
            # Bars H+2 and H+3 in Redis; H+3's event first, then H+2's (as a failover re-sends it).
            await write_bars(redis, keys, feed, bars[HISTORY + 2:HISTORY + 4])
            await _event(redis, settings, feed, bars[HISTORY + 3].open_time_ms)
            await listener.wait_for(3)
            await _event(redis, settings, feed, bars[HISTORY + 2].open_time_ms)
            await _status(redis, settings, b"superseded_events", b"2")
            await _acknowledged(redis, settings)
            got = listener.received
            assert [(p.last_bar_ms, p.revision) for p in got] == [
                (bars[HISTORY + step].open_time_ms, 0) for step in (0, 1, 3)]
            assert await redis.hget(keys.forecaster(), b"revised_forecasts") == b"0"
        async with listening(settings) as late:
            [retained] = await late.wait_for(1)
            assert retained.last_bar_ms == bars[HISTORY + 3].open_time_ms


async def _event(redis: aioredis.Redis, settings: Settings, feed: Feed, open_ms: int) -> None:
    keys = RedisKeys(settings.redis.key_prefix)
    await redis.xadd(keys.feed_events(feed, settings.redis.event_shards), {
        "exchange": feed.exchange, "symbol": feed.symbol, "interval": feed.interval,
        "open_time_ms": str(open_ms), "status": "complete"})
