"""The worker publishes calibrated bands (real Redis, real Mosquitto, a tiny model on real bars):
the band comes from the feed's calibrator state in Redis, each realised bar teaches it and is
counted inside or outside the published band, a restarted worker goes on from the stored state,
and ``volcast status`` shows the live coverage."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from stream_harness import StreamEntries
from worker_harness import (
    Listener,
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

from forecaster.calibration import WARM_UP
from forecaster.feeds import feed_key
from forecaster.frame import BarFrame
from forecaster.model_store import ModelRecord, ModelStore, promote
from forecaster.payload import Prediction
from forecaster.training import train_model
from forecaster.training_loop import quiet
from volcast.calibration_state import unpack_state
from volcast.connections import redis_client
from volcast.keys import RedisKeys
from volcast.settings import Settings
from volcast.status_render import render_table
from volcast.status_report import collect_status

HISTORY = 2000
C_LOW, C_HIGH = 0.5, 0.75


@pytest.fixture
async def settings(tmp_path: Path, redis_config: dict[str, Any]) -> AsyncIterator[Settings]:
    s = settings_for(tmp_path / "models", symbols=("NEAR/USDT", "ALGO/USDT"), forecaster={"calibrate_horizons": True},
                     redis=redis_config)
    yield s
    await delete_prefix(s)
    await clear_retained(s)


def first_of(value: bytes) -> int:
    """The next bar's value of a per-horizon state field."""
    return int(value.split(b",")[0])


async def test_worker_publishes_calibrated_bands_and_counts_coverage(settings: Settings) -> None:
    keys = RedisKeys(settings.redis.key_prefix)
    warm, fresh = feeds_of(settings)
    series = {feed: symbol_bars(i) for i, feed in enumerate((warm, fresh))}
    frames = [(feed_key(f), BarFrame.from_bars(bars[:HISTORY], 60_000)) for f, bars in series.items()]
    trained = await asyncio.to_thread(train_model, frames, settings.model, settings.training, progress=quiet)
    ModelStore(settings.refit.model_dir).write("1", lambda d: trained.save(d, "1"), {"name": "lstm"})
    step = 0
    async with redis_client(settings.redis) as redis:
        for feed in (warm, fresh):
            await write_bars(redis, keys, feed, series[feed][:HISTORY])
        # A state a previous worker left: past its warm-up, with corrections on both ends.
        await redis.hset(keys.calibration(warm), mapping={
            "horizons": "1", "c_low": repr(C_LOW), "c_high": repr(C_HIGH), "n": str(WARM_UP),
            "to_ms": str(series[warm][HISTORY - 2].open_time_ms), "step": "0.02", "warm_up": str(WARM_UP)})
        await promote(redis, keys, ModelRecord("lstm", "1", {}, 1))

        async def next_bar(listener: Listener) -> dict[str, Prediction]:
            """Close one bar of both feeds; their predictions made from it (not a retained one)."""
            nonlocal step
            closed = series[warm][HISTORY + step].open_time_ms
            await close_bars(redis, keys, [(f, series[f][HISTORY + step]) for f in (warm, fresh)])
            step += 1
            for _ in range(300):
                made = {p.feed.symbol: p for p in listener.received if p.last_bar_ms == closed}
                if len(made) == 2:
                    return made
                await asyncio.sleep(0.05)
            raise AssertionError(f"no predictions from bar {closed}")

        async with worker(settings), listening(settings) as listener:
            for _ in range(30):
                batch = await next_bar(listener)
                if {p.model_version for p in batch.values()} == {"1"}:
                    break
                await asyncio.sleep(0.2)
            else:
                raise AssertionError("the model never served")
            first = batch[warm.symbol]
            assert first.calibrated and first.raw_quantiles is not None
            raw = first.raw_quantiles
            # Exactly the stored corrections, in log1p volume, around the model's own band.
            assert first.quantiles[0.1] == pytest.approx(math.expm1(math.log1p(raw[0.1]) - C_LOW), rel=1e-9)
            assert first.quantiles[0.9] == pytest.approx(math.expm1(math.log1p(raw[0.9]) + C_HIGH), rel=1e-9)
            assert first.quantiles[0.5] == raw[0.5]
            assert first.quantiles[0.1] <= first.quantiles[0.5] <= first.quantiles[0.9]
            new = batch[fresh.symbol]
            assert not new.calibrated and new.raw_quantiles is None and set(new.quantiles) == {0.1, 0.5, 0.9}
            for _ in range(3):
                await next_bar(listener)
            # Realised bars: each counted inside or outside the band that was published for it.
            bar_ms = series[warm][HISTORY + step - 1].open_time_ms
            for _ in range(50):
                state = cast(dict[bytes, bytes], await redis.hgetall(keys.calibration(warm)))
                if first_of(state.get(b"to_ms", b"0")) == bar_ms:
                    break
                await asyncio.sleep(0.1)
            realised = cast(StreamEntries, await redis.xrange(keys.realised(warm), min=f"{first.open_time_ms}-0",
                                                              max=f"{first.open_time_ms}-0"))
            fields = realised[0][1]
            assert float(fields[b"low"]) == first.quantiles[0.1] and float(fields[b"high"]) == first.quantiles[0.9]
            actual = float(fields[b"actual"])
            inside = first.quantiles[0.1] <= actual <= first.quantiles[0.9]
            assert fields[b"covered"] == (b"1" if inside else b"0")
            # Three realised bars with a band taught the calibrator (the first lstm forecast's
            # and the two after it); the state moved by one STEP share per bar at most.
            assert first_of(state[b"n"]) == WARM_UP + 3
            assert abs(float(state[b"c_low"].split(b",")[0]) - C_LOW) <= 3 * 0.02
            scores = await redis.hgetall(keys.scores(warm))
            assert int(scores[b"banded"]) == 3 and 0 <= int(scores[b"covered"]) <= 3
            fresh_state = cast(dict[bytes, bytes], await redis.hgetall(keys.calibration(fresh)))
            assert first_of(fresh_state[b"n"]) == 3
            kept = float(state[b"c_low"].split(b",")[0]), float(state[b"c_high"].split(b",")[0])
            # The model forecasts every bar of the next hour and three windows (issue 15): each
            # target is a horizon of the state, learnt once its window closed, its published
            # band counted. Their bands are raw while any target is warming up.
            # Every target's state is in ``packed``, horizon 0's also in the text fields.
            packed = unpack_state(state[b"packed"].decode())
            assert packed is not None and packed["n"][0] == first_of(state[b"n"])
            targets = len(packed["n"])
            assert targets == len(first.horizons.volume) + len(first.horizons.sums) > 1  # type: ignore[union-attr]
            assert not first.horizons_calibrated
            assert packed["banded"][:4] == [0, 2, 1, 0]  # 4 bars closed since the first lstm forecast

        # A restart: the new worker reads the states back and goes on from them.
        async with worker(settings), listening(settings) as listener:
            batch = await next_bar(listener)
            again = batch[warm.symbol]
            assert again.calibrated and again.raw_quantiles is not None
            assert again.quantiles[0.1] == pytest.approx(
                math.expm1(math.log1p(again.raw_quantiles[0.1]) - kept[0]), rel=1e-9)
            assert again.quantiles[0.9] == pytest.approx(
                math.expm1(math.log1p(again.raw_quantiles[0.9]) + kept[1]), rel=1e-9)
            assert not batch[fresh.symbol].calibrated  # still warming up: 4 of 60 bars

            report = await collect_status(redis, settings)
            by_symbol = {f["symbol"]: f for f in report["feeds"]}
            assert by_symbol[warm.symbol]["calibration"]["calibrated"] is True
            assert by_symbol[fresh.symbol]["calibration"]["calibrated"] is False
            assert by_symbol[warm.symbol]["scores"]["banded"] >= 3
            assert report["coverage"]["banded"] >= 6 and report["coverage"]["feeds"] == 2
            by_horizon = report["coverage"]["by_horizon"]
            assert by_horizon["labels"][:2] == ["+1", "+2"] and by_horizon["banded"][1] >= 2 * 2
            table = render_table(report)
            assert "80% band coverage, all feeds:" in table and "calibrated" in table
            assert f"raw {by_symbol[fresh.symbol]['calibration']['n']}/{WARM_UP}" in table
