"""The forecaster worker against real Redis and real Mosquitto, with real bars."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from stream_harness import StreamEntries
from worker_harness import (
    MINUTE,
    clear_retained,
    close_bars,
    delete_prefix,
    feeds_of,
    listening,
    settings_for,
    symbol_bars,
    worker,
    write_bars,
)

from forecaster.payload import SCHEMA_VERSION, Prediction
from volcast.connections import redis_client
from volcast.keys import RedisKeys
from volcast.settings import Settings

HISTORY = 300


@pytest.fixture
async def settings(tmp_path: Path, redis_mode: str, redis_config: dict[str, Any]) -> AsyncIterator[Settings]:
    # Events in shards: on one node read by one XREADGROUP naming both, on the cluster (shards in
    # slots of their own) shard by shard. The other worker tests run on the one stream of old.
    s = settings_for(tmp_path / "models", redis={**redis_config, "event_shards": 3 if redis_mode == "cluster" else 2})
    yield s
    await delete_prefix(s)
    await clear_retained(s)


async def test_one_prediction_per_symbol_per_bar_with_baseline_and_retained(settings: Settings) -> None:
    keys = RedisKeys(settings.redis.key_prefix)
    shards = settings.redis.event_shards
    feeds = feeds_of(settings)
    series = {feed: symbol_bars(i) for i, feed in enumerate(feeds)}
    async with redis_client(settings.redis) as redis:
        for feed in feeds:
            await write_bars(redis, keys, feed, series[feed][:HISTORY])
        async with worker(settings), listening(settings) as listener:
            for step in range(3):
                await close_bars(redis, keys, [(feed, series[feed][HISTORY + step]) for feed in feeds], shards)
                await listener.wait_for(len(feeds) * (step + 1))
            got = listener.received
            assert len(got) == 3 * len(feeds)
            for step in range(3):
                bar = series[feeds[0]][HISTORY + step]
                batch = got[step * len(feeds):(step + 1) * len(feeds)]
                assert sorted(p.feed.symbol for p in batch) == sorted(f.symbol for f in feeds)
                for p in batch:
                    assert p.last_bar_ms == bar.open_time_ms
                    assert p.open_time_ms == bar.open_time_ms + MINUTE
                    assert p.baseline and p.model_name == "har" and p.model_version == "baseline"
                    # HAR direct serves the default horizons too (no quantiles: a baseline has none).
                    assert p.horizons is not None and len(p.horizons.volume) == 60 and not p.horizons.quantiles
                    assert list(p.horizons.sums) == ["5m", "15m", "1h"] and min(p.horizons.volume) > 0
                    assert p.horizons.volume[0] == pytest.approx(p.volume, rel=5e-5)
                    assert p.volume > 0 and p.feed.exchange == "binance" and p.feed.interval_ms == MINUTE
                    assert p.last_volume == float(series[p.feed][HISTORY + step].volume)
            for _ in range(100):  # acknowledged once published and recorded
                pending = [(await redis.xpending(stream, settings.forecaster.group))["pending"]
                           for stream in keys.event_streams(MINUTE, shards)]
                if not any(pending):
                    break
                await asyncio.sleep(0.05)
            assert not any(pending)
            # Redis: latest prediction, the predictions stream, realised errors and live scores.
            feed = feeds[0]
            latest = await redis.hgetall(keys.prediction(feed))
            assert int(latest[b"open_time_ms"]) == series[feed][HISTORY + 2].open_time_ms + MINUTE
            assert orjson.loads(latest[b"json"])["schema"] == SCHEMA_VERSION
            assert await redis.xlen(keys.predictions(feed)) == 3
            realised = cast(StreamEntries, await redis.xrange(keys.realised(feed)))
            assert [int(i.split(b"-")[0]) for i, _ in realised] == [
                series[feed][HISTORY + 1].open_time_ms, series[feed][HISTORY + 2].open_time_ms]
            actual = float(realised[-1][1][b"actual"])
            assert actual == float(series[feed][HISTORY + 2].volume)
            scores = await redis.hgetall(keys.scores(feed))
            assert int(scores[b"n"]) == 2 and float(scores[b"rmse_log"]) >= 0 and b"mase" in scores
            status = await redis.hgetall(keys.forecaster())
            assert status[b"baseline"] == b"1" and int(status[b"predictions"]) == 9
        # A subscriber arriving after the fact gets the retained latest prediction of each feed.
        async with listening(settings) as late:
            retained = await late.wait_for(len(feeds))
            assert all(late.retained)
            assert {p.open_time_ms for p in retained} == {series[feeds[0]][HISTORY + 2].open_time_ms + MINUTE}


async def test_malformed_event_is_acknowledged_and_worker_goes_on(settings: Settings) -> None:
    keys = RedisKeys(settings.redis.key_prefix)
    feeds = feeds_of(settings)[:1]
    bars = symbol_bars(0)
    async with redis_client(settings.redis) as redis:
        await write_bars(redis, keys, feeds[0], bars[:HISTORY])
        async with worker(settings), listening(settings) as listener:
            shards = settings.redis.event_shards
            await redis.xadd(keys.bar_events(MINUTE, shards - 1, shards), {"exchange": "binance"})
            await close_bars(redis, keys, [(feeds[0], bars[HISTORY])], shards)
            (p,) = await listener.wait_for(1)
            assert isinstance(p, Prediction) and p.last_bar_ms == bars[HISTORY].open_time_ms
            # Set aside beside its own shard, and acknowledged there.
            dead = cast(StreamEntries, await redis.xrange(keys.dead_events(MINUTE, shards - 1, shards)))
            assert len(dead) == 1 and b"missing symbol" in dead[0][1][b"error"]
            for _ in range(100):  # the bar's event is acknowledged once its forecast is recorded
                pending = [(await redis.xpending(s, settings.forecaster.group))["pending"]
                           for s in keys.event_streams(MINUTE, shards)]
                if not any(pending):
                    break
                await asyncio.sleep(0.05)
            assert not any(pending)


async def test_events_with_and_without_the_bars_values_give_the_same_forecasts(settings: Settings) -> None:
    # The streamer's events carry the closed bar's values, an older streamer's (or a restored
    # bar's) do not and the worker reads the bar: the same forecasts from the same bars. (The HAR
    # fallback's forecasts differ in the last bits between two runs of the very same events, with
    # or without values, e.g. 26424.753012444984 and 26424.75301236124: its first fit depends on
    # how a boundary's events split into passes. The bars themselves are compared exactly in
    # tests/test_worker_histories.py.)
    keys = RedisKeys(settings.redis.key_prefix)
    shards = settings.redis.event_shards
    feeds = feeds_of(settings)
    series = {feed: symbol_bars(i) for i, feed in enumerate(feeds)}
    got: dict[bool, list[Prediction]] = {}
    for carry in (True, False):
        async with redis_client(settings.redis) as redis:
            for feed in feeds:
                await write_bars(redis, keys, feed, series[feed][:HISTORY])
            async with worker(settings), listening(settings) as listener:
                for step in range(3):
                    await close_bars(redis, keys, [(feed, series[feed][HISTORY + step]) for feed in feeds], shards,
                                     carry=carry)
                    await listener.wait_for(len(feeds) * (step + 1))
                got[carry] = sorted(listener.received, key=lambda p: (p.feed.symbol, p.open_time_ms))
        await delete_prefix(settings)
        await clear_retained(settings)
    assert len(got[True]) == len(got[False]) == 3 * len(feeds)
    for a, b in zip(got[True], got[False], strict=True):
        assert (a.feed, a.open_time_ms, a.last_bar_ms, a.last_volume) == (b.feed, b.open_time_ms, b.last_bar_ms,
                                                                          b.last_volume)
        assert a.volume == pytest.approx(b.volume, rel=1e-9)
        assert a.horizons is not None and b.horizons is not None
        assert list(a.horizons.volume) == pytest.approx(list(b.horizons.volume), rel=1e-9)
