"""The no-model fallback on real bars: sensible from the first bar, HAR once histories allow it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from worker_harness import NEAR, delete_prefix, feeds_of, settings_for, symbol_bars, write_bars

from forecaster.bar_matrix import COLUMNS, BarMatrix
from forecaster.bar_reader import Histories
from forecaster.boundary_pass import BoundaryPass
from forecaster.fallback import FallbackBaseline
from forecaster.features import HAR_HISTORY
from forecaster.frame import BarFrame
from forecaster.guard import GuardCounts
from forecaster.guard_fallback import baseline_forecasts
from forecaster.horizons import Horizons
from forecaster.predictor import baseline_predictor
from forecaster.publisher import Publisher
from forecaster.serving import Serving
from forecaster.worker import Worker
from volcast.connections import redis_client
from volcast.keys import Feed, RedisKeys


def test_fallback_tracks_the_data_from_a_few_bars_and_switches_to_har_after_a_refit() -> None:
    frame = BarFrame.from_csv(NEAR)
    fallback = FallbackBaseline(refit_every=3, min_har_bars=240)
    fallback.refit([("binance:NEAR/USDT", frame[:5])])  # a fresh stack: five bars
    assert fallback.har is None  # too short for HAR: EWMA serves
    forecasts = []
    for end in range(5, 40):
        history = frame[:end]
        predictor = fallback.choose(len(history))
        assert predictor.name == "ewma"
        forecasts.append(predictor.predict([("binance:NEAR/USDT", history)])[0].volume)
    assert len(set(forecasts)) > 20  # follows the bars instead of one constant
    for _ in range(3):
        fallback.served()
    assert fallback.refit_due
    fallback.refit([("binance:NEAR/USDT", frame[:600])])
    # cast: mypy holds both as asserted above, across the refit that changes them
    assert cast(object, fallback.har) is not None and not cast(bool, fallback.refit_due)
    har = [fallback.choose(end).predict([("binance:NEAR/USDT", frame[:end])])[0].volume for end in range(600, 630)]
    assert fallback.choose(600).name == "har" and len(set(har)) > 20
    assert fallback.choose(10).name == "ewma"  # short feeds still get EWMA


async def test_live_workers_share_the_fallback_refit(tmp_path: Path, redis_config: dict[str, Any]) -> None:
    """Workers that split the feeds fit ``max_fit_feeds`` between them, the longest histories of
    each one's share: a second worker must not double the refits' CPU (benchmarks/scale.py)."""
    settings = settings_for(tmp_path / "models", symbols=[f"S{i}/USDT" for i in range(6)],
                            redis={**redis_config, "event_shards": 3})
    keys = RedisKeys(settings.redis.key_prefix)
    feeds = feeds_of(settings)
    bars = [symbol_bars(i)[:40] for i in range(len(feeds))]
    async with redis_client(settings.redis) as redis:
        try:
            for i, feed in enumerate(feeds):
                await write_bars(redis, keys, feed, bars[i][i:])  # 40, 39, ... bars, all ending at bar 39
            w = Worker(settings, redis, Publisher(settings.mqtt), consumer="w1")
            w.fallback.max_fit_feeds = 4
            fitted: list[list[str]] = []
            refit = w.fallback.refit

            def counted(histories: Sequence[tuple[str, BarFrame]]) -> None:
                fitted.append([key for key, _ in histories])
                refit(histories)

            w.fallback.refit = counted  # type: ignore[method-assign]
            histories = await w.bars.at(feeds, bars[0][-1].open_time_ms)
            longest = [w.passes.feed_key(f) for f in feeds]
            for workers, share in ((1, 4), (2, 2), (3, 2), (5, 1)):
                w.reader.workers = workers  # what the split's last look at the group found
                await w.passes.refit_fallback(histories.ready, histories)
                assert fitted[-1] == longest[:share]
            # A fit on one feed of the six (a first boundary that held one event) is redone
            # before the next pass of them all, not an hour later; then not again.
            w.reader.workers = 1
            await w.passes.refit_fallback(histories.ready[:1], histories)
            assert w.passes.fallback_too_narrow(histories.ready)
            assert not w.passes.fallback_too_narrow(histories.ready[:1])
            await w.passes.refit_fallback(histories.ready, histories)
            assert fitted[-1] == longest[:4] and not w.passes.fallback_too_narrow(histories.ready)
        finally:
            await delete_prefix(settings)


def test_a_fit_on_one_feed_is_too_narrow_for_the_others() -> None:
    """HAR direct fitted on one feed's 400 bars (all a pool's worker may hold at the first
    boundary it serves, before the shards are split) takes some other feeds' horizons more than
    ten times above their busiest bar of the day, and the guard puts the naive forecast in their
    place; fitted on its share of the feeds it does not. So a fit that read less than half of what
    a boundary now gives is refitted at once (benchmarks/scale.py, two workers on 1000 feeds:
    7,933 forecasts guarded in 100 boundaries before)."""
    spec = Horizons(60, (("5m", 5), ("15m", 15), ("1h", 60)))
    frames = [(f"binance:S{i}/USDT", BarFrame.from_bars(symbol_bars(i % 20)[:400])) for i in range(200)]
    fallback = FallbackBaseline(horizons=spec)

    def guarded() -> int:
        return sum(f.guard is not None for f in fallback.choose(400).predict(frames))

    fallback.refit(frames[5:6])
    assert guarded() > 0
    assert fallback.too_narrow(len(frames), workers=2)
    fallback.refit(frames[: fallback.fit_feeds(2)])
    assert guarded() == 0
    assert not fallback.too_narrow(len(frames), workers=2)
    assert not fallback.too_narrow(1, workers=1)  # one feed is all there is: its fit is not narrow


def test_a_guarded_har_forecast_falls_back_to_ewma_before_naive() -> None:
    """Where the fallback's HAR is guarded (here: fitted on one feed, as a pool's first narrow
    fit), the worker serves EWMA on the same bars, a level of the last few bars that no far
    horizon can take off from (0.82 of naive's rmse_log on the dev files, docs/accuracy.md), and
    naive only where EWMA fails the guard too."""
    spec = Horizons(60, (("5m", 5), ("15m", 15), ("1h", 60)))
    frames = [BarFrame.from_bars(symbol_bars(i % 20)[:400]) for i in range(200)]
    feeds = [Feed("binance", f"S{i}/USDT", 60_000) for i in range(200)]
    matrix = BarMatrix(60_000, HAR_HISTORY)
    for feed, frame in zip(feeds, frames, strict=True):
        matrix.write(feed, frame.open_time_ms, np.stack([getattr(frame, c) for c in COLUMNS]), continues=False)
    open_ms = int(frames[0].open_time_ms[-1])
    histories = Histories(open_ms, feeds, matrix, {}, {})
    fallback = FallbackBaseline(horizons=spec)
    fallback.refit([(f"binance:S{i}/USDT", frames[i]) for i in range(20)])  # EWMA from every kind of day
    ewma = fallback.ewma
    fallback.refit([("binance:S5/USDT", frames[5])])
    fallback.ewma = ewma
    naive = baseline_predictor("naive")

    def key(feed: Feed) -> str:
        return f"binance:{feed.symbol}"

    alone = baseline_forecasts(feeds, histories, fallback.choose, naive, key)
    guarded = [i for i, (_, used) in enumerate(alone) if used is naive]
    assert guarded  # the narrow HAR's horizons: above the guard's bound on some feeds
    assert all(used is fallback.har for i, (_, used) in enumerate(alone) if i not in guarded)
    laddered = baseline_forecasts(feeds, histories, fallback.choose, naive, key, then=ewma)
    for i in guarded:
        forecast, used = laddered[i]
        assert used is ewma and forecast.guard is None  # no horizons, as naive's (EWMA has none)
        assert np.isfinite(forecast.volume) and forecast.volume >= 0
    for i in set(range(len(feeds))) - set(guarded):  # the others are HAR's, unchanged
        assert laddered[i][1] is fallback.har and laddered[i][0].volume == alone[i][0].volume
    # The boundary pass: HAR serving (no model), its guarded forecasts replaced by EWMA's.
    boundary = object.__new__(BoundaryPass)  # only what _replace_guarded reads
    boundary.fallback, boundary.naive, boundary.guards = fallback, naive, GuardCounts()
    boundary._feed_key, boundary.interval_ms = key, 60_000
    har = fallback.har
    assert har is not None
    served = [(forecast, Serving(har, None)) for forecast, _ in alone]
    out, guards = boundary._replace_guarded(open_ms, feeds, served, histories, created=0)
    assert sorted(guards) == guarded and all(g.model_name == "har" for g in guards.values())
    assert all(out[i][1].predictor is ewma and out[i][0].guard is None for i in guarded)
    assert boundary.guards.status()["guarded"] == str(len(guarded))
