"""Many feeds (real Redis and Mosquitto, real bars): forward passes in chunks on the predictor
thread, each chunk published as it is computed; and the Redis bookkeeping script on its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from worker_harness import (
    MINUTE,
    clear_retained,
    close_bars,
    delete_prefix,
    feeds_of,
    listening,
    settings_for,
    stop,
    symbol_bars,
    worker,
    write_bars,
)

from forecaster.boundary_pass import INLINE_MAX
from forecaster.forward_passes import PREDICT_CHUNK
from forecaster.publisher import Publisher
from forecaster.recorder import Recorder, Write
from forecaster.worker import Worker
from volcast.connections import redis_client
from volcast.keys import Feed, RedisKeys
from volcast.settings import Settings

FEEDS = PREDICT_CHUNK + 44  # two chunks: more than INLINE_MAX, so the predictor thread serves them
HISTORY = 30


@pytest.fixture
async def settings(tmp_path: Path, redis_config: dict[str, Any]) -> AsyncIterator[Settings]:
    # On the shared single Redis and on the local Redis Cluster (tests/conftest.py).
    s = settings_for(tmp_path / "models", symbols=[f"S{i:03d}/USDT" for i in range(FEEDS)], redis=redis_config)
    yield s
    await delete_prefix(s)
    await clear_retained(s)


async def test_a_boundary_of_many_feeds_is_predicted_in_chunks_one_prediction_each(settings: Settings) -> None:
    assert FEEDS > INLINE_MAX
    keys = RedisKeys(settings.redis.key_prefix)
    feeds = feeds_of(settings)
    bars = [symbol_bars(i % 3)[:HISTORY + 2] for i in range(len(feeds))]
    async with redis_client(settings.redis) as redis:
        pipe_feeds = list(zip(feeds, bars, strict=True))
        for feed, series in pipe_feeds:
            await write_bars(redis, keys, feed, series[:HISTORY])
        async with worker(settings), listening(settings) as listener:
            for step in range(2):
                await close_bars(redis, keys, [(feed, series[HISTORY + step]) for feed, series in pipe_feeds])
                await listener.wait_for(len(feeds) * (step + 1), timeout=60)
            got = listener.received
            assert len(got) == 2 * len(feeds)
            for step in range(2):
                batch = got[step * len(feeds):(step + 1) * len(feeds)]
                assert {p.feed for p in batch} == set(feeds)
                assert {p.last_bar_ms for p in batch} == {bars[0][HISTORY + step].open_time_ms}
            by_feed = {p.feed: p for p in got[len(feeds):]}
            for feed, series in pipe_feeds:
                p = by_feed[feed]
                assert p.last_volume == float(series[HISTORY + 1].volume)
                assert p.baseline and p.model_name == "ewma" and p.volume > 0  # 30 bars: too few for HAR
            for _ in range(100):  # every event acknowledged once published and recorded
                if (await redis.xpending(keys.bar_events(MINUTE), settings.forecaster.group))["pending"] == 0:
                    break
                await asyncio.sleep(0.05)
            assert (await redis.xpending(keys.bar_events(MINUTE), settings.forecaster.group))["pending"] == 0
            assert await redis.xlen(keys.predictions(feeds[-1])) == 2
            status = await redis.hgetall(keys.forecaster())
            assert int(status[b"predictions"]) == 2 * len(feeds)


async def test_the_bookkeeping_script_skips_replays_and_is_reloaded_if_redis_forgot_it(settings: Settings) -> None:
    keys = RedisKeys(settings.redis.key_prefix)
    feed = Feed("binance", "S000/USDT", MINUTE)
    async with redis_client(settings.redis) as redis:
        recorder = Recorder(redis, keys, kept=100, score_window=10)
        writes: list[Write] = [["x", keys.predictions(feed), "60000-0", "volume", "1.5"],
                               ["h", keys.prediction(feed), "volume", "1.5", "open_time_ms", "60000"],
                               ["i", keys.forecaster(), "predictions", "1"]]
        assert (await recorder.apply(writes)).replayed == 0
        # The same boundary again (a replayed event): the stream entry is there, the rest rewritten.
        recorder._sha = "0" * 40  # and Redis does not know the script (it restarted meanwhile)
        assert (await recorder.apply(writes)).replayed == 1
        assert await redis.xlen(keys.predictions(feed)) == 1
        assert await redis.hget(keys.prediction(feed), "open_time_ms") == b"60000"
        assert await redis.hget(keys.forecaster(), "predictions") == b"2"
        # A write Redis refuses for another reason is an error, not a replay.
        await redis.set(keys.scores(feed), "not a hash")
        with pytest.raises(Exception, match="WRONGTYPE"):
            await recorder.apply([["h", keys.scores(feed), "n", "1"]])


async def test_events_of_the_same_bar_arriving_meanwhile_join_the_boundary(settings: Settings) -> None:
    """The streamer writes 500 bars per transaction: the rest of a boundary arrives while its
    first part is predicted, and is queued behind it; an event of a later bar waits its turn."""
    keys = RedisKeys(settings.redis.key_prefix)
    a, b, c = feeds_of(settings)[:3]
    # Histories of different lengths: EWMA serves each length in a forward pass of its own, so
    # the boundary has more than one pass and looks for more events between them.
    series = {feed: symbol_bars(i)[:32] for i, feed in enumerate((a, b, c))}
    first_bar = {a: 0, b: 20, c: 0}
    t0, t1 = series[a][30].open_time_ms, series[a][31].open_time_ms
    stream = keys.bar_events(MINUTE)
    async with redis_client(settings.redis) as redis, listening(settings) as listener:
        for feed, bars in series.items():
            await write_bars(redis, keys, feed, bars[first_bar[feed]:30])
        publisher = Publisher(settings.mqtt)
        w = Worker(settings, redis, publisher, consumer="w1")
        tasks = [asyncio.create_task(job) for job in (publisher.run(), w.record(), w.acknowledge())]
        try:
            await w.ensure_group()
            await close_bars(redis, keys, [(a, series[a][30]), (b, series[b][30])])
            first: Any = await redis.xreadgroup(w.group, w.consumer, {stream: ">"}, count=10)
            # While a and b are predicted (lengths 31 and 11: two passes), c's bar t0 and a's
            # bar t1 close.
            await close_bars(redis, keys, [(c, series[c][30]), (a, series[a][31])])
            await w.process([w.events.parse(i, f) for i, f in first[0][1]])
            got = await listener.wait_for(3)
            assert sorted((p.feed.symbol, p.last_bar_ms) for p in got) == sorted(
                (f.symbol, t0) for f in (a, b, c))
            assert [(e.feed, e.open_time_ms) for e in w.handoffs.stash] == [(a, t1)]  # the next boundary's
            stashed, w.handoffs.stash = w.handoffs.stash, []
            await w.process(stashed)
            got = await listener.wait_for(4)
            assert (got[-1].feed, got[-1].last_bar_ms) == (a, t1) and len(got) == 4
            for _ in range(100):
                if (await redis.xpending(stream, w.group))["pending"] == 0:
                    break
                await asyncio.sleep(0.05)
            assert (await redis.xpending(stream, w.group))["pending"] == 0
        finally:
            for task in tasks:
                await stop(task, task.get_coro().__qualname__)  # type: ignore[union-attr]
