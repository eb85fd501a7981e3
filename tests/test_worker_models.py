"""Hot swap, rollback and a corrupt model, with a tiny model trained on real bars (real Redis/Mosquitto)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

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

from forecaster.artifact import WEIGHTS
from forecaster.feeds import feed_key
from forecaster.frame import BarFrame
from forecaster.model_commands import list_models, rollback
from forecaster.model_store import ModelRecord, ModelStore, promote
from forecaster.predictor import load_predictor
from forecaster.training import TrainedModel, train_model
from forecaster.training_loop import quiet
from volcast.connections import redis_client
from volcast.keys import RedisKeys
from volcast.settings import Settings

HISTORY = 2000


@pytest.fixture
async def settings(tmp_path: Path, redis_config: dict[str, Any]) -> AsyncIterator[Settings]:
    # On the shared single Redis and on the local Redis Cluster (tests/conftest.py).
    s = settings_for(tmp_path / "models", redis=redis_config)
    yield s
    await delete_prefix(s)
    await clear_retained(s)


def tiny_model(settings: Settings, series: dict) -> TrainedModel:  # type: ignore[type-arg]
    frames = [(feed_key(feed), BarFrame.from_bars(bars[:HISTORY], 60_000)) for feed, bars in series.items()]
    return train_model(frames, settings.model, settings.training, progress=quiet)


async def test_hot_swap_rollback_and_corrupt_model_without_a_missed_bar(settings: Settings) -> None:
    keys = RedisKeys(settings.redis.key_prefix)
    feeds = feeds_of(settings)
    series = {feed: symbol_bars(i) for i, feed in enumerate(feeds)}
    store = ModelStore(settings.refit.model_dir)
    trained = await asyncio.to_thread(tiny_model, settings, series)
    step = 0
    async with redis_client(settings.redis) as redis:
        for feed in feeds:
            await write_bars(redis, keys, feed, series[feed][:HISTORY])
        async with worker(settings), listening(settings) as listener:

            async def next_bar() -> set[str]:
                """Close one bar of every feed; the versions that predicted it (one per feed)."""
                nonlocal step
                await close_bars(redis, keys, [(feed, series[feed][HISTORY + step]) for feed in feeds])
                step += 1
                got = await listener.wait_for(len(feeds) * step)
                batch = got[-len(feeds):]
                bar_ms = series[feeds[0]][HISTORY + step - 1].open_time_ms
                assert sorted(p.feed.symbol for p in batch) == sorted(f.symbol for f in feeds)
                assert all(p.last_bar_ms == bar_ms for p in batch)
                return {p.model_version for p in batch}

            async def until_serving(version: str) -> None:
                for _ in range(30):
                    if await next_bar() == {version}:
                        return
                    await asyncio.sleep(0.2)
                raise AssertionError(f"version {version} never served")

            assert await next_bar() == {"baseline"}
            for version in ("1", "2"):
                store.write(version, partial(trained.save, version=version), {"name": "lstm"})
            await promote(redis, keys, ModelRecord("lstm", "1", {}, 1))
            await until_serving("1")
            await promote(redis, keys, ModelRecord("lstm", "2", {}, 2))
            await until_serving("2")
            ok, message = await rollback(settings, "1")
            assert ok, message
            await until_serving("1")
            assert "* " in (await list_models(settings)).splitlines()[1]  # version 1 marked serving

            # A corrupt version is refused: the worker keeps version 1 and counts the error.
            def corrupt(directory: Path) -> None:
                trained.save(directory, "3")
                weights = directory / WEIGHTS
                weights.write_bytes(weights.read_bytes()[:-7] + b"garbage")

            store.write("3", corrupt, {"name": "lstm"})
            ok, message = await rollback(settings, "3")
            assert not ok and "3" in message  # the CLI refuses it too...
            await promote(redis, keys, ModelRecord("lstm", "3", {}, 3))  # ...so force it in
            for _ in range(20):
                status = await redis.hgetall(keys.forecaster())
                if status.get(b"model_errors"):
                    break
                await asyncio.sleep(0.2)
            assert status[b"model_errors"] == b"1"
            assert b"version 3" in status[b"last_model_error"]
            assert await next_bar() == {"1"}
            # A Redis that lost the model hash: the loaded model goes on serving...
            await redis.delete(keys.model())
            await asyncio.sleep(1.2)  # the worker polls the hash once a second
            assert await next_bar() == {"1"}
            # ...but a demotion to the baseline (no older version to go back to) is followed.
            await redis.hset(keys.model(), mapping={"version": "", "demoted_version": "1"})
            await until_serving("baseline")
            # Every bar closed got exactly one prediction per feed: no bar missed across swaps.
            opens = sorted({p.last_bar_ms for p in listener.received})
            assert opens == [series[feeds[0]][HISTORY + i].open_time_ms for i in range(step)]
            assert len(listener.received) == step * len(feeds)


async def test_prepared_boundaries_forecast_what_whole_windows_do(settings: Settings) -> None:
    """After each boundary the worker prepares the next one (one LSTM step per feed then): the
    forecasts are the ones the same artifact gives on whole windows, and the status counts them."""
    keys = RedisKeys(settings.redis.key_prefix)
    feeds = feeds_of(settings)
    series = {feed: symbol_bars(i) for i, feed in enumerate(feeds)}
    trained = await asyncio.to_thread(tiny_model, settings, series)
    store = ModelStore(settings.refit.model_dir)
    store.write("1", lambda d: trained.save(d, "1"), {"name": "lstm"})
    reference = load_predictor(store.path("1"), settings.model)
    steps = 4
    async with redis_client(settings.redis) as redis:
        for feed in feeds:
            await write_bars(redis, keys, feed, series[feed][:HISTORY])
        await promote(redis, keys, ModelRecord("lstm", "1", {}, 1))
        async with worker(settings), listening(settings) as listener:
            for step in range(steps):
                await close_bars(redis, keys, [(feed, series[feed][HISTORY + step]) for feed in feeds])
                await listener.wait_for(len(feeds) * (step + 1))
                await asyncio.sleep(0.5)  # the preparation runs once the boundary is out
            status = await redis.hgetall(keys.forecaster())
    assert {p.model_version for p in listener.received} == {"1"}
    # The first boundary read whole windows; every later one was prepared by the one before it.
    assert int(status[b"prepared_forecasts"]) == (steps - 1) * len(feeds)
    assert int(status[b"window_forecasts"]) == len(feeds)
    for p in listener.received:
        closed = next(i for i, b in enumerate(series[p.feed]) if b.open_time_ms == p.last_bar_ms)
        frame = BarFrame.from_bars(series[p.feed][: closed + 1], 60_000)
        [want] = reference.predict([(feed_key(p.feed), frame)])
        assert p.volume == pytest.approx(want.volume, rel=1e-5)
        assert p.quantiles == pytest.approx(want.quantiles, rel=1e-5)
        # The default model's horizons (60 bars, three windows) from the same batched pass; the
        # payload rounds them to 5 significant digits (a prepared state may move the fifth).
        assert p.horizons is not None and want.horizons is not None
        assert len(p.horizons.volume) == 60 and list(p.horizons.sums) == ["5m", "15m", "1h"]
        assert p.horizons.volume == pytest.approx(want.horizons.volume, rel=2e-4)
        assert p.horizons.volume[0] == pytest.approx(p.volume, rel=5e-5)
        for q in (0.1, 0.5, 0.9):
            assert p.horizons.quantiles[q] == pytest.approx(want.horizons.quantiles[q], rel=2e-4)
        for label, (volume, quantiles) in p.horizons.sums.items():
            assert volume == pytest.approx(want.horizons.sums[label][0], rel=2e-4)
            assert quantiles == pytest.approx(want.horizons.sums[label][1], rel=2e-4)
