"""The output guard in the real worker (real Redis, real Mosquitto): a model whose forecasts
overflow, and a bar with a NaN volume, never put a non-finite or out-of-bound value on MQTT or
into Redis; what was replaced is said in the payload and counted in the status."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from worker_harness import (
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

from forecaster.feeds import feed_key
from forecaster.frame import BarFrame
from forecaster.guard import ABOVE_BOUND, GUARD_BARS, GUARD_FACTOR, NOT_FINITE
from forecaster.lstm_model import LstmModel
from forecaster.model_store import ModelRecord, ModelStore, current_model, promote
from forecaster.refit import refit_once
from forecaster.training import train_model
from forecaster.training_loop import quiet
from volcast.bar import Bar
from volcast.connections import redis_client
from volcast.keys import Feed, RedisKeys
from volcast.settings import Settings

HISTORY = 2000


@pytest.fixture
async def settings(tmp_path: Path, redis_config: dict[str, Any]) -> AsyncIterator[Settings]:
    # On the shared single Redis and on the local Redis Cluster (tests/conftest.py).
    s = settings_for(tmp_path / "models", redis=redis_config)
    yield s
    await delete_prefix(s)
    await clear_retained(s)


def bound_of(bars: list[Bar]) -> float:
    volumes = [float(b.volume) for b in bars[-GUARD_BARS:]]
    return GUARD_FACTOR * (1 + max((v for v in volumes if math.isfinite(v)), default=0.0)) - 1


async def every_value_in_redis(redis: Any, prefix: str) -> list[str]:
    """Every value the worker wrote under ``prefix`` (hash values and stream entry values, as
    text): everything but the bars and their events, which the test wrote."""
    values: list[str] = []
    async for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
        if key.endswith(b":bars") or b":events:" in key:
            continue
        kind = (await redis.type(key)).decode()
        if kind == "hash":
            values += [v.decode() for v in (await redis.hgetall(key)).values()]
        elif kind == "stream":
            for _, fields in await redis.xrange(key):
                values += [v.decode() for v in fields.values()]
    return values


async def test_an_overflowing_model_and_a_nan_bar_publish_only_sane_values(settings: Settings) -> None:
    keys = RedisKeys(settings.redis.key_prefix)
    feeds = feeds_of(settings)
    series = {feed: symbol_bars(i) for i, feed in enumerate(feeds)}
    frames = [(feed_key(f), BarFrame.from_bars(b[:HISTORY], 60_000)) for f, b in series.items()]
    trained = await asyncio.to_thread(train_model, frames, settings.model, settings.training, quiet)
    assert isinstance(trained.model, LstmModel)
    # Log forecasts far past expm1's range: what the reported model did once it saw a day of bars.
    trained.model.har.coef[0] += 1000.0
    store = ModelStore(settings.refit.model_dir)
    store.write("1", lambda d: trained.save(d, "1"), {"name": "lstm"})
    nan_feed = feeds[1]
    steps = 3
    async with redis_client(settings.redis) as redis:
        for feed in feeds:
            await write_bars(redis, keys, feed, series[feed][:HISTORY])
        await promote(redis, keys, ModelRecord("lstm", "1", {}, 1))
        async with worker(settings), listening(settings) as listener:
            for step in range(steps):
                closing = [(feed, series[feed][HISTORY + step]) for feed in feeds]
                if step == 1:  # a bar whose volume is NaN (a bad backfill before trades were checked)
                    await close_nan_bar(redis, keys, nan_feed, series[nan_feed][HISTORY + step])
                    closing = [c for c in closing if c[0] != nan_feed]
                await close_bars(redis, keys, closing)
                await listener.wait_for(len(feeds) * (step + 1))
            await asyncio.sleep(0.5)  # the Redis bookkeeping runs after the hand-over
            status = await redis.hgetall(keys.forecaster())
            scores = {feed: await redis.hgetall(keys.scores(feed)) for feed in feeds}
            latest = await redis.hgetall(keys.prediction(feeds[0]))
            stored = await every_value_in_redis(redis, settings.redis.key_prefix)

    got = listener.received
    assert len(got) == steps * len(feeds)
    for p in got:
        step = (p.last_bar_ms - series[p.feed][HISTORY].open_time_ms) // 60_000
        bound = bound_of(series[p.feed][:HISTORY + step + 1])
        values = [p.volume, p.last_volume, *p.quantiles.values()]
        assert all(math.isfinite(v) and 0 <= v <= bound for v in values), p
        # The NaN bar makes the model's inputs NaN for a while: its forecast is not finite then.
        nan_window = p.feed == nan_feed and step >= 1
        assert p.guard is not None and p.guard.reason == (NOT_FINITE if nan_window else ABOVE_BOUND), p
        assert (p.guard.model_name, p.guard.model_version) == ("lstm", "1")
        assert p.baseline and p.model_version == "baseline" and p.model_name in ("har", "ewma", "naive")
    nan_prediction = next(p for p in got if p.feed == nan_feed and p.last_bar_ms == series[nan_feed][HISTORY + 1]
                          .open_time_ms)
    assert nan_prediction.last_volume == 0.0  # a NaN bar volume counts as none
    assert int(status[b"guarded"]) == steps * len(feeds) and int(status[b"guarded_feeds"]) == len(feeds)
    assert int(status[b"guarded_not_finite"]) == steps - 1
    assert all(int(s[b"guarded"]) == steps for s in scores.values())
    assert scores[feeds[0]][b"last_guard_reason"] == b"above_bound"
    assert scores[nan_feed][b"last_guard_reason"] == b"not_finite"
    assert latest[b"guard"] == b"above_bound"
    odd = [v for v in stored if v.lower() in ("nan", "inf", "-inf", "infinity", "null") or ":null" in v]
    assert not odd
    floats = [float(v) for v in stored if _is_number(v)]
    assert np.isfinite(floats).all()


async def close_nan_bar(redis: Any, keys: RedisKeys, feed: Feed, bar: Bar) -> None:
    fields = bar.to_fields()
    fields["volume"] = "NaN"
    pipe = redis.pipeline(transaction=False)
    pipe.xadd(keys.bars(feed), fields, id=f"{bar.open_time_ms}-0")
    pipe.xadd(keys.bar_events(feed.interval_ms), {
        "exchange": feed.exchange, "symbol": feed.symbol, "interval": feed.interval,
        "open_time_ms": str(bar.open_time_ms), "status": bar.status.value,
    })
    await pipe.execute()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


async def test_the_reported_case_eleven_hours_of_bars_never_serve_an_absurd_model(tmp_path: Path) -> None:
    """11.4 h of real bars with ``refit.min_bars: 600`` and a small model gave version 1, which
    published 1.37e28 once the feed held a day of bars. Now nothing is trained on 11 h; once
    there is a day and more, whatever is promoted publishes only values within the bound."""
    settings = settings_for(tmp_path / "models", refit={"min_bars": 600, "holdout_bars": 120})
    keys = RedisKeys(settings.redis.key_prefix)
    feeds = feeds_of(settings)
    series = {feed: symbol_bars(i) for i, feed in enumerate(feeds)}
    eleven_hours = 684
    try:
        async with redis_client(settings.redis) as redis:
            for feed in feeds:
                await write_bars(redis, keys, feed, series[feed][:eleven_hours])
            outcome = await refit_once(settings, redis)
            least = 1440 + settings.model.look_back + settings.refit.holdout_bars
            assert outcome.result == "skipped" and f"{least} in all" in outcome.message, outcome.message
            assert await current_model(redis, keys) is None
            for feed in feeds:
                await write_bars(redis, keys, feed, series[feed][eleven_hours:HISTORY])
            outcome = await refit_once(settings, redis)
            assert outcome.result in ("promoted", "kept"), outcome.message
            if outcome.result == "promoted":
                assert outcome.challenger["out_of_bound"] == 0
            async with worker(settings), listening(settings) as listener:
                for step in range(3):
                    await close_bars(redis, keys, [(feed, series[feed][HISTORY + step]) for feed in feeds])
                    await listener.wait_for(len(feeds) * (step + 1))
        for p in listener.received:
            step = (p.last_bar_ms - series[p.feed][HISTORY].open_time_ms) // 60_000
            bound = bound_of(series[p.feed][:HISTORY + step + 1])
            assert all(math.isfinite(v) and 0 <= v <= bound for v in [p.volume, *p.quantiles.values()]), p
            assert p.model_version == (outcome.version or "baseline") or p.guard is not None
    finally:
        await delete_prefix(settings)
        await clear_retained(settings)
