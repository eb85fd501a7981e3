"""The refit worker trains the first model as soon as a feed's history is in Redis, not at its
next scheduled run (``refit.every``, 6 h); it waits while a history load is under way; a model
trained on history without trade counts does not read them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from worker_harness import delete_prefix, feeds_of, settings_for, symbol_bars, write_bars

from forecaster.model_store import ModelStore, current_model
from forecaster.refit import FIRST_MODEL_POLL_S, run
from volcast.bar import BarStatus
from volcast.connections import redis_client
from volcast.keys import RedisKeys

PATIENCE_S = 240.0


def history(index: int) -> list:  # type: ignore[type-arg]
    """Real bars as a history load leaves them: no trade count, buy/sell volume or trade ids."""
    return [replace(b, quote_volume=None, trades=None, buy_volume=None, sell_volume=None, vwap=None,
                    status=BarStatus.HISTORY) for b in symbol_bars(index)]


async def test_first_model_is_trained_as_soon_as_history_is_in(tmp_path: Path, redis_config: dict[str, Any]) -> None:
    settings = settings_for(tmp_path / "models", symbols=("NEAR/USDT",),
                            model={"features": ["log_volume", "trades", "buy_share", "time_of_day"]},
                            redis=redis_config)
    assert settings.refit.every == 6 * 3_600_000
    keys = RedisKeys(settings.redis.key_prefix)
    (feed,) = feeds_of(settings)
    bars = history(0)
    try:
        async with redis_client(settings.redis) as redis:
            worker = asyncio.create_task(run(settings))
            try:
                deadline = time.monotonic() + PATIENCE_S
                while (await redis.hget(keys.refit(), "result")) != b"skipped":  # nothing in Redis yet
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
                # The streamer is loading the history: a first part is in, more is coming.
                await redis.hset(keys.health(feed), "history_state", "loading")
                await write_bars(redis, keys, feed, bars[:2400])
                await asyncio.sleep(3 * FIRST_MODEL_POLL_S)
                assert await current_model(redis, keys) is None  # not trained on half a history
                await write_bars(redis, keys, feed, bars[2400:])
                await redis.hset(keys.health(feed), "history_state", "loaded")
                while (result := await redis.hget(keys.refit(), "result")) == b"skipped":
                    assert time.monotonic() < deadline, await redis.hgetall(keys.refit())
                    await asyncio.sleep(0.1)
            finally:
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker
            # A challenger was trained (and compared with HAR) long before the 6 h schedule.
            refit = await redis.hgetall(keys.refit())
            assert result in (b"promoted", b"kept") and b"challenger rmse_log" in refit[b"message"], refit
            record = await current_model(redis, keys)
            if result == b"promoted":
                assert record is not None and record.version == "1"
                path = ModelStore(settings.refit.model_dir).path(record.version) / "meta.json"
                meta = json.loads(path.read_text())
                # Trained on the whole history (up to the held-out bars), without what history lacks.
                ((_first, end),) = meta["training_span"].values()
                assert end == bars[-settings.refit.holdout_bars].open_time_ms
                assert "log_volume" in meta["features"] and not {"trades", "buy_share"} & set(meta["features"])
    finally:
        await delete_prefix(settings)


async def test_the_first_run_waits_for_a_history_that_is_loading(tmp_path: Path,
                                                                 redis_config: dict[str, Any]) -> None:
    settings = settings_for(tmp_path / "models", symbols=("NEAR/USDT",), redis=redis_config)
    keys = RedisKeys(settings.redis.key_prefix)
    (feed,) = feeds_of(settings)
    bars = history(0)
    try:
        async with redis_client(settings.redis) as redis:
            # Started while the streamer loads the history: enough bars for a run are already in.
            await redis.hset(keys.health(feed), "history_state", "loading")
            await write_bars(redis, keys, feed, bars[:2400])
            worker = asyncio.create_task(run(settings))
            try:
                await asyncio.sleep(5 * FIRST_MODEL_POLL_S)
                assert await redis.hgetall(keys.refit()) == {}  # no run on part of a history
                await write_bars(redis, keys, feed, bars[2400:])
                await redis.hset(keys.health(feed), "history_state", "loaded")
                deadline = time.monotonic() + PATIENCE_S
                while (await redis.hget(keys.refit(), "result")) not in (b"promoted", b"kept"):
                    assert time.monotonic() < deadline, await redis.hgetall(keys.refit())
                    await asyncio.sleep(0.1)
            finally:
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker
            assert f"on the last {settings.refit.holdout_bars} bars of 1 feeds".encode() in (
                await redis.hget(keys.refit(), "message") or b"")
    finally:
        await delete_prefix(settings)
