"""The forecaster on history bars that lack fields (no trade count, no buy volume): it reads them
from Redis on the first live bar's event, without an event per history bar, and forecasts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from worker_harness import (
    MINUTE,
    close_bars,
    delete_prefix,
    feeds_of,
    listening,
    settings_for,
    symbol_bars,
    worker,
    write_bars,
)

from forecaster.bar_reader import BarHistories
from volcast.bar import Bar, BarStatus
from volcast.connections import redis_client
from volcast.keys import RedisKeys
from volcast.settings import Settings


def as_history(bars: list[Bar]) -> list[Bar]:
    return [replace(b, quote_volume=None, trades=None, buy_volume=None, sell_volume=None, vwap=None,
                    status=BarStatus.HISTORY) for b in bars]


@pytest.fixture
async def settings(tmp_path: Path, redis_config: dict[str, Any]) -> AsyncIterator[Settings]:
    # On the shared single Redis and on the local Redis Cluster (tests/conftest.py).
    s = settings_for(tmp_path / "models", symbols=("NEAR/USDT",), redis=redis_config)
    yield s
    await delete_prefix(s)


async def test_history_bars_are_read_with_unknown_fields_as_nan(settings: Settings) -> None:
    keys = RedisKeys(settings.redis.key_prefix)
    (feed,) = feeds_of(settings)
    bars = symbol_bars(0)[:200]
    history = as_history(bars[:150])
    async with redis_client(settings.redis) as redis:
        await write_bars(redis, keys, feed, [*history, *bars[150:]])
        reader = BarHistories(redis, keys, MINUTE, 60)
        read = await reader.at([feed], bars[160].open_time_ms)  # afresh: 60 bars, 49 of them history
        ((_, batch),) = read.batches([feed], 60)
        assert np.isnan(batch.trades[0, :49]).all() and not np.isnan(batch.trades[0, 49:]).any()
        assert np.isnan(batch.buy_volume[0, :49]).all()
        np.testing.assert_array_equal(batch.volume[0], [float(b.volume) for b in bars[101:161]])
        await redis.delete(keys.bars(feed))
        await write_bars(redis, keys, feed, history)
        reader = BarHistories(redis, keys, MINUTE, 60)
        await reader.at([feed], history[100].open_time_ms)
        nxt = await reader.at([feed], history[101].open_time_ms)  # one new bar: the XREAD path
        ((_, batch),) = nxt.batches([feed], 60)
        assert np.isnan(batch.trades[0, -1]) and batch.volume[0, -1] == float(history[101].volume)


async def test_the_first_live_bar_after_history_is_forecast_from_it(settings: Settings) -> None:
    keys = RedisKeys(settings.redis.key_prefix)
    (feed,) = feeds_of(settings)
    bars = symbol_bars(0)
    history = as_history(bars[:1500])  # a day and more: HAR serves (no model yet)
    async with redis_client(settings.redis) as redis, listening(settings) as listener, worker(settings):
        await write_bars(redis, keys, feed, history)  # no events
        await close_bars(redis, keys, [(feed, bars[1500])])
        (prediction,) = await listener.wait_for(1)
        assert prediction.open_time_ms == bars[1501].open_time_ms
        assert prediction.baseline and prediction.model_name == "har" and prediction.guard is None
        status = await redis.hgetall(keys.forecaster())
        assert status.get(b"dead_letters", b"0") == b"0" and status.get(b"handling_errors", b"0") == b"0"
