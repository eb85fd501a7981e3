"""The live worker reads the market-wide inputs the way training does (real Redis and Mosquitto):
its published forecasts equal the trained model's offline forecasts on files with the inputs
attached (forecaster/market.py), for whole windows and for prepared ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
from worker_harness import (
    clear_retained,
    delete_prefix,
    feeds_of,
    listening,
    settings_for,
    symbol_bars,
    worker,
    write_bars,
)

from forecaster.feeds import feed_key
from forecaster.frame import BarFrame
from forecaster.market import MARKET_FEATURES, attach
from forecaster.model_store import ModelRecord, ModelStore, promote
from forecaster.predictor import load_predictor
from forecaster.training import train_model
from forecaster.training_loop import quiet
from volcast.bar import Bar
from volcast.connections import redis_client
from volcast.keys import Feed, RedisKeys
from volcast.settings import Settings

HISTORY = 2000
FEATURES = ["log_volume", "time_of_day", *MARKET_FEATURES]


@pytest.fixture
async def settings(tmp_path: Path, redis_config: dict[str, Any]) -> AsyncIterator[Settings]:
    s = settings_for(tmp_path / "models", model={"look_back": 8, "hidden": 4, "features": FEATURES},
                     redis=redis_config)
    yield s
    await delete_prefix(s)
    await clear_retained(s)


async def close_together(redis: aioredis.Redis, keys: RedisKeys, closing: Sequence[tuple[Feed, Bar]]) -> None:
    """The boundary's bars, then all their events in one MULTI/EXEC: the worker sees every feed's
    bar of the boundary at once. (Not bars and events in one transaction: on a cluster they are in
    different slots; the events share one stream, one slot.)"""
    bars = redis.pipeline(transaction=False)
    for feed, bar in closing:
        bars.xadd(keys.bars(feed), bar.to_fields(), id=f"{bar.open_time_ms}-0")  # type: ignore[arg-type]
    await bars.execute()
    pipe = redis.pipeline(transaction=True)
    for feed, bar in closing:
        pipe.xadd(keys.bar_events(feed.interval_ms), {
            "exchange": feed.exchange, "symbol": feed.symbol, "interval": feed.interval,
            "open_time_ms": str(bar.open_time_ms), "status": bar.status.value,
        })
    await pipe.execute()


async def test_worker_forecasts_with_the_market_inputs_training_computes(settings: Settings) -> None:
    keys = RedisKeys(settings.redis.key_prefix)
    feeds = feeds_of(settings)
    series = {feed: symbol_bars(i) for i, feed in enumerate(feeds)}
    offline = dict(attach([(feed_key(f), BarFrame.from_bars(b, 60_000)) for f, b in series.items()],
                          MARKET_FEATURES)[0])
    trained = await asyncio.to_thread(
        train_model, [(k, f[:HISTORY]) for k, f in offline.items()], settings.model, settings.training, quiet)
    store = ModelStore(settings.refit.model_dir)
    store.write("1", lambda d: trained.save(d, "1"), {"name": "lstm"})
    reference = load_predictor(store.path("1"), settings.model)
    steps = 3
    async with redis_client(settings.redis) as redis:
        for feed in feeds:
            await write_bars(redis, keys, feed, series[feed][:HISTORY])
        await promote(redis, keys, ModelRecord("lstm", "1", {}, 1))
        async with worker(settings), listening(settings) as listener:
            for step in range(steps):
                await close_together(redis, keys, [(feed, series[feed][HISTORY + step]) for feed in feeds])
                await listener.wait_for(len(feeds) * (step + 1))
                await asyncio.sleep(0.5)  # the next boundary is then prepared (one LSTM step)
            status = await redis.hgetall(keys.forecaster())
    assert {p.model_version for p in listener.received} == {"1"}
    assert int(status[b"market_feeds"]) == len(feeds) and int(status[b"market_left_out"]) == 0
    assert int(status[b"prepared_forecasts"]) > 0
    for p in listener.received:
        key = feed_key(p.feed)
        closed = next(i for i, b in enumerate(series[p.feed]) if b.open_time_ms == p.last_bar_ms)
        volume, quantiles = reference.forecast_positions(key, offline[key], np.array([closed + 1]))
        assert p.volume == pytest.approx(float(volume[0]), rel=1e-5)
        assert quantiles is not None
        assert [p.quantiles[q] for q in sorted(p.quantiles)] == pytest.approx(quantiles[0].tolist(), rel=1e-5)
    # And without the others' bars the forecasts would differ: the inputs matter to this model.
    key = feed_key(feeds[0])
    alone, _ = reference.forecast_positions(key, replace(offline[key], market=None), np.array([HISTORY + 1]))
    first = next(p for p in listener.received if p.feed == feeds[0])
    assert first.volume != pytest.approx(float(alone[0]), rel=1e-6)
