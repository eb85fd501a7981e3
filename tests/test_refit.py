"""The refit worker on real bars in real Redis: train, compare with the champion, promote or keep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worker_harness import delete_prefix, feeds_of, settings_for, symbol_bars, write_bars

from forecaster.model_store import ModelStore, current_model
from forecaster.predictor import load_predictor
from forecaster.refit import refit_once
from volcast.connections import redis_client
from volcast.keys import RedisKeys

BARS = 2400


async def test_refit_promotes_only_a_better_challenger_and_prunes_the_store(tmp_path: Path,
                                                                          redis_config: dict[str, Any]) -> None:
    settings = settings_for(tmp_path / "models", refit={"keep": 1}, redis=redis_config)
    keys = RedisKeys(settings.redis.key_prefix)
    store = ModelStore(settings.refit.model_dir)
    try:
        async with redis_client(settings.redis) as redis:
            # Too little history: nothing is trained.
            for i, feed in enumerate(feeds_of(settings)):
                await write_bars(redis, keys, feed, symbol_bars(i)[:1000])
            skipped = await refit_once(settings, redis)
            assert skipped.result == "skipped" and "min_bars" in skipped.message
            assert (await redis.hgetall(keys.refit()))[b"result"] == b"skipped"
            for i, feed in enumerate(feeds_of(settings)):
                await write_bars(redis, keys, feed, symbol_bars(i)[1000:BARS])

            results = []
            for _ in range(2):
                outcome = await refit_once(settings, redis)
                results.append(outcome)
                assert outcome.result in ("promoted", "kept"), outcome.message
                better = outcome.challenger["rmse_log"] < outcome.champion["rmse_log"]
                assert (outcome.result == "promoted") == better
                record = await current_model(redis, keys)
                status = await redis.hgetall(keys.refit())
                assert status[b"result"] == outcome.result.encode()
                assert int(status[b"next_run_ms"]) - int(status[b"last_run_ms"]) == settings.refit.every
                if outcome.result == "promoted":
                    assert record is not None and record.version == outcome.version
                    assert record.scores["rmse_log"] == outcome.challenger["rmse_log"]
                    predictor = load_predictor(store.path(record.version), settings.model)
                    assert predictor.version == record.version
            promoted = [o.version for o in results if o.result == "promoted"]
            # keep=1: only the serving version is left in the store.
            assert store.versions() == promoted[-1:]
            if len(promoted) == 2:
                assert promoted == ["1", "2"]
            if results[0].result == "promoted":
                # The second run's champion was the first run's model, not the baseline.
                assert "version 1" in results[1].message
    finally:
        await delete_prefix(settings)


async def test_a_challenger_better_than_the_champion_is_promoted(tmp_path: Path,
                                                                redis_config: dict[str, Any]) -> None:
    import asyncio

    from forecaster.feeds import feed_key
    from forecaster.frame import BarFrame
    from forecaster.model_store import ModelRecord, promote
    from forecaster.training import train_model
    from forecaster.training_loop import quiet

    settings = settings_for(tmp_path / "models", refit={"keep": 1}, redis=redis_config)
    keys = RedisKeys(settings.redis.key_prefix)
    store = ModelStore(settings.refit.model_dir)
    series = {feed: symbol_bars(i)[:BARS] for i, feed in enumerate(feeds_of(settings))}
    # A champion that is valid but wrong by a factor e^3 on every bar.
    frames = [(feed_key(f), BarFrame.from_bars(b, 60_000)) for f, b in series.items()]
    bad = await asyncio.to_thread(train_model, frames, settings.model, settings.training, quiet)
    bad.model.har.coef[0] += 3.0  # type: ignore[attr-defined]
    store.write("1", lambda d: bad.save(d, "1"), {"name": "lstm"})
    try:
        async with redis_client(settings.redis) as redis:
            for feed, bars in series.items():
                await write_bars(redis, keys, feed, bars)
            await promote(redis, keys, ModelRecord("lstm", "1", {}, 1))
            outcome = await refit_once(settings, redis)
            assert outcome.result == "promoted", outcome.message
            assert "lstm version 1" in outcome.message
            record = await current_model(redis, keys)
            assert record is not None and record.version == "2" == outcome.version
            assert store.versions() == ["2"]  # keep=1 pruned the old champion
            assert store.info("2")["scores"]["rmse_log"] == outcome.challenger["rmse_log"]
    finally:
        await delete_prefix(settings)


def test_a_challenger_with_non_finite_scores_or_out_of_bound_forecasts_is_refused() -> None:
    import math

    from forecast_helpers import KEY, TINY_MODEL, TINY_TRAINING, near

    from forecaster.lstm_model import LstmModel
    from forecaster.predictor import ModelPredictor
    from forecaster.refit import holdout_scores, refusal
    from forecaster.training import train_model
    from forecaster.training_loop import quiet

    frame = near()[:2000]
    trained = train_model([(KEY, frame[:1880])], TINY_MODEL, TINY_TRAINING, progress=quiet)
    model = trained.model
    assert isinstance(model, LstmModel)
    sane = holdout_scores(ModelPredictor(model, "lstm", "c"), [(KEY, frame)], 120)
    assert sane["out_of_bound"] == 0 and refusal(sane) is None
    model.har.coef[0] += 12.0  # e^12: far above ten times the largest bar of any day
    wild = holdout_scores(ModelPredictor(model, "lstm", "c"), [(KEY, frame)], 120)
    assert wild["out_of_bound"] == 120 and math.isfinite(wild["rmse_log"])
    assert "120 of its forecasts" in (refusal(wild) or "")
    assert "rmse_log is not finite" in (refusal({**sane, "rmse_log": math.inf}) or "")
    assert "mase, rmse_log are not finite" in (refusal({**sane, "rmse_log": math.nan, "mase": math.nan}) or "")
