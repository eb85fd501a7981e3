"""Self-demotion: the pure decision (forecaster/demotion.py), its compare-and-set in real Redis, and
the real worker demoting a version that is clearly worse than naive to the previous one."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any, cast

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

from forecaster.demotion import Demotion, DemotionWatch, previous_version
from forecaster.demotion_store import Demoter
from forecaster.feeds import feed_key
from forecaster.frame import BarFrame
from forecaster.lstm_model import LstmModel
from forecaster.model_store import ModelRecord, ModelStore, current_model, promote
from forecaster.training import train_model
from forecaster.training_loop import quiet
from volcast.connections import redis_client
from volcast.keys import RedisKeys

MINUTE = 60_000


def feed_bars(watch: DemotionWatch, version: str, bars: range, *, predicted: float, actual: float = 100.0,
              naive: float = 90.0, feeds: int = 3, guarded: int = 0) -> None:
    """Each bar: ``feeds`` forecasts by ``version`` (``guarded`` of them replaced), then realised."""
    for bar in bars:
        for f in range(feeds):
            watch.served(version, bar * MINUTE, guarded=f < guarded)
        for _ in range(feeds - guarded):
            watch.realised(version, bar * MINUTE, predicted, actual, naive)


def test_a_version_worse_than_naive_for_the_window_is_demoted_once_to_the_previous_one() -> None:
    watch = DemotionWatch(window=10, ratio=1.0)
    feed_bars(watch, "3", range(9), predicted=400.0)  # far worse than naive (90 for 100)
    assert watch.verdict(["1", "2", "3"]) is None  # not a whole window yet
    feed_bars(watch, "3", range(9, 10), predicted=400.0)
    demotion = watch.verdict(["1", "2", "3", "4"])
    assert demotion is not None and (demotion.version, demotion.to_version) == ("3", "2")
    assert demotion.bars == 10 and demotion.rmse_log > demotion.naive_rmse_log
    assert "live rmse_log" in demotion.reason and "naive" in demotion.reason
    assert watch.verdict(["1", "2", "3"]) is None  # once
    status = watch.status()
    assert (status["demoted_version"], status["demoted_to"]) == ("3", "2")
    # Version 2 then serves and is bad too: demoted to 1, never back to 3.
    feed_bars(watch, "2", range(10, 20), predicted=1.0)
    again = watch.verdict(["1", "2", "3"])
    assert again is not None and (again.version, again.to_version) == ("2", "1")


def test_a_version_as_good_as_naive_stays_and_the_window_is_the_latest_bars() -> None:
    watch = DemotionWatch(window=5, ratio=1.0)
    feed_bars(watch, "3", range(20), predicted=95.0)  # better than naive's 90
    assert watch.verdict(["2", "3"]) is None
    bars, rmse, naive, share = watch.figures()
    assert bars == 5 and rmse < naive and share == 0.0
    feed_bars(watch, "3", range(20, 24), predicted=1000.0)  # 4 bad bars of 5: worse overall
    assert watch.verdict(["2", "3"]) is not None


def test_a_version_the_guard_mostly_replaces_is_demoted_to_the_baseline_when_none_is_older() -> None:
    watch = DemotionWatch(window=4, ratio=1.0)
    feed_bars(watch, "1", range(4), predicted=100.0, guarded=2)  # 2 of 3 forecasts replaced
    demotion = watch.verdict(["1"])
    assert demotion is not None and demotion.to_version is None and "output guard replaced 67%" in demotion.reason
    assert watch.status()["demoted_to"] == "baseline"


def test_what_is_not_scored() -> None:
    watch = DemotionWatch(window=2, ratio=1.0)
    watch.realised("1", 0, 500.0, 100.0, 90.0)  # a bar this process did not see served
    watch.served("1", MINUTE, guarded=False)
    watch.realised("1", MINUTE, math.nan, 100.0, 90.0)
    bars, rmse, naive, share = watch.figures("1")
    assert bars == 1 and math.isnan(rmse) and math.isnan(naive) and share == 0.0  # nothing realised
    assert all(v not in ("nan", "inf") for v in watch.status().values())
    with pytest.raises(ValueError):
        DemotionWatch(window=0, ratio=1.0)


def test_the_previous_version_is_the_newest_older_one_not_demoted() -> None:
    assert previous_version(["1", "2", "3", "5"], "5", {"3"}) == "2"
    assert previous_version(["1", "2"], "1", ()) is None
    assert previous_version(["1", "10", "9"], "11", ()) == "10"
    assert previous_version(["1"], "seed", ()) is None


async def test_a_demotion_switches_only_the_version_it_watched(tmp_path: Path, redis_config: dict[str, Any]) -> None:
    settings = settings_for(tmp_path / "models", redis=redis_config)
    keys = RedisKeys(settings.redis.key_prefix)
    store = ModelStore(tmp_path / "models")
    try:
        async with redis_client(settings.redis) as redis:
            demoter = Demoter(redis, keys, store, DemotionWatch(window=1, ratio=1.0))
            await promote(redis, keys, ModelRecord("lstm", "4", {"rmse_log": 0.5}, 1))
            demoter.pending = Demotion("3", "2", "worse than naive", 1, 2.0, 1.0, 0.0)
            assert not await demoter.apply()  # version 4 serves now (a refit promoted it)
            assert (await current_model(redis, keys)).version == "4"  # type: ignore[union-attr]
            demoter.pending = Demotion("4", "2", "worse than naive", 1, 2.0, 1.0, 0.0)
            # cast: mypy keeps the Demotion assigned above, across the call that clears it
            assert await demoter.apply() and cast(object, demoter.pending) is None
            model = await redis.hgetall(keys.model())
            refit = await redis.hgetall(keys.refit())
            assert (model[b"version"], model[b"demoted_version"], model[b"demotion_reason"]) == (
                b"2", b"4", b"worse than naive")
            assert (refit[b"demoted_version"], refit[b"demoted_to"]) == (b"4", b"2")
    finally:
        await delete_prefix(settings)


async def test_the_worker_demotes_a_version_clearly_worse_than_naive(tmp_path: Path,
                                                                     redis_config: dict[str, Any]) -> None:
    settings = settings_for(tmp_path / "models", forecaster={"demotion_window": 3}, redis=redis_config)
    keys = RedisKeys(settings.redis.key_prefix)
    feeds = feeds_of(settings)
    history = 2000
    series = {feed: symbol_bars(i) for i, feed in enumerate(feeds)}
    frames = [(feed_key(f), BarFrame.from_bars(b[:history], MINUTE)) for f, b in series.items()]
    good = await asyncio.to_thread(train_model, frames, settings.model, settings.training, quiet)
    bad = await asyncio.to_thread(train_model, frames, settings.model, settings.training, quiet)
    assert isinstance(bad.model, LstmModel)
    bad.model.har.coef[0] += 1.5  # 4.5 times too high on every bar: within the guard's bound, worse than naive
    store = ModelStore(settings.refit.model_dir)
    store.write("1", lambda d: good.save(d, "1"), {"name": "lstm", "scores": {"rmse_log": 0.7}})
    store.write("2", lambda d: bad.save(d, "2"), {"name": "lstm", "scores": {"rmse_log": 0.7}})
    try:
        async with redis_client(settings.redis) as redis:
            for feed in feeds:
                await write_bars(redis, keys, feed, series[feed][:history])
            await promote(redis, keys, ModelRecord("lstm", "2", {}, 1))
            async with worker(settings), listening(settings) as listener:
                for step in range(12):
                    await close_bars(redis, keys, [(feed, series[feed][history + step]) for feed in feeds])
                    await listener.wait_for(len(feeds) * (step + 1))
                    if {p.model_version for p in listener.received[-len(feeds):]} == {"1"}:
                        break
                    await asyncio.sleep(0.3)  # the bookkeeping (and so the verdict) follows the hand-over
                status = await redis.hgetall(keys.forecaster())
            model = await redis.hgetall(keys.model())
            refit = await redis.hgetall(keys.refit())
        versions = [p.model_version for p in listener.received]
        assert versions[0] == "2" and versions[-1] == "1", versions
        assert all(p.guard is None for p in listener.received)
        assert (model[b"version"], model[b"demoted_version"]) == (b"1", b"2")
        assert b"naive" in model[b"demotion_reason"] and refit[b"demoted_to"] == b"1"
        assert (status[b"demoted_version"], status[b"demoted_to"]) == (b"2", b"1")
    finally:
        await delete_prefix(settings)
        await clear_retained(settings)
