"""``volcast refit``: train a challenger on the bar history in Redis, promote it only if it scores better.

Each run reads every configured feed's bars, holds back the most recent ``refit.holdout_bars``
of each, trains on the rest, and scores challenger and champion (the serving version, or the
HAR baseline fitted on the same training bars when there is none) on the held-back bars. The
challenger is promoted only with a lower rmse_log, finite scores and no forecast on the
held-back bars that the worker's output guard would replace (forecaster/guard.py): written to
the model store under a new version, named in ``keys.model()`` (forecasters swap it in at their
next boundary), and the store pruned to ``refit.keep`` versions. This runs in its own process
(torch threads = ``refit.threads``) so that training never slows inference.

The first model is not left to the schedule: while no model is promoted and no run has trained
yet (none ran, or the last was skipped for lack of bars), the worker looks every
``FIRST_MODEL_POLL_S`` at the bar streams (XLEN) and the feeds' history loads (the streamer's
``history_state`` in each health hash, streamer/history.py). It waits while a history is still
loading (a model of the oldest weeks only, trained as soon as a feed has enough of them, would
serve until the next scheduled run), and trains as soon as none is and a feed has the bars a run
needs, instead of ``refit.every`` later. A fresh start whose history loads a month of candles
therefore trains minutes after it, not 6 hours (or 33 hours of live bars) later.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from forecaster.baselines import Har
from forecaster.feeds import configured_feeds, feed_key
from forecaster.frame import BarFrame
from forecaster.market import attach_configured
from forecaster.model_store import ModelRecord, ModelStore, current_model, promote
from forecaster.predictor import ModelPredictor, Predictor, baseline_predictor, load_predictor
from forecaster.refit_metrics import RefitMetrics
from forecaster.scoring import score
from forecaster.training import TrainedModel, clean_frame, min_training_bars, train_model
from forecaster.training_loop import quiet
from volcast.aio import raise_if_cancelled
from volcast.backoff import Backoff
from volcast.bar import Bar
from volcast.connections import redis_client
from volcast.keys import Feed, RedisKeys
from volcast.metrics_server import new_registry, serving_metrics
from volcast.redis_text import field_mapping
from volcast.settings import Settings

log = logging.getLogger(__name__)

Result = Literal["promoted", "kept", "skipped", "failed"]
FIRST_MODEL_POLL_S = 1.0
# The streamer's health-hash field and value of a history load under way (streamer/history.py).
_HISTORY_STATE = "history_state"
_LOADING = b"loading"


@dataclass(frozen=True, slots=True)
class RefitOutcome:
    result: Result
    message: str
    version: str | None = None
    challenger: dict[str, float] = field(default_factory=dict)
    champion: dict[str, float] = field(default_factory=dict)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def read_frames(redis: aioredis.Redis, keys: RedisKeys, feeds: Sequence[Feed]) -> list[tuple[str, BarFrame]]:
    """Every closed bar in Redis of each feed, as frames keyed like the worker keys them."""
    pipe = redis.pipeline(transaction=False)
    for feed in feeds:
        pipe.xrange(keys.bars(feed), min="-", max="+")
    replies: list[Any] = await pipe.execute()
    frames: list[tuple[str, BarFrame]] = []
    for feed, entries in zip(feeds, replies, strict=True):
        if len(entries) < 2:
            continue
        bars = [Bar.from_fields(fields) for _, fields in entries]
        frames.append((feed_key(feed), BarFrame.from_bars(bars, feed.interval_ms)))
    return frames


def holdout_scores(predictor: Predictor, frames: Sequence[tuple[str, BarFrame]], holdout: int) -> dict[str, float]:
    """Scores on the last ``holdout`` bars of every frame, pooled (rmse_log weighted by bars)."""
    total = 0.0
    squares = 0.0
    out_of_bound = 0.0
    mase: list[tuple[float, float]] = []
    for key, frame in frames:
        got = score(predictor, [(key, frame)], (len(frame) - holdout, len(frame)))
        n = got["bars"]
        total += n
        squares += got["rmse_log"] ** 2 * n
        out_of_bound += got["out_of_bound"]
        if not math.isnan(got["mase"]):
            mase.append((got["mase"], n))
    out = {"rmse_log": math.sqrt(squares / total) if total else math.nan, "bars": total,
           "out_of_bound": out_of_bound}
    if mase:
        out["mase"] = sum(m * n for m, n in mase) / sum(n for _, n in mase)
    return out


def _train_and_score(settings: Settings, frames: list[tuple[str, BarFrame]], champion: Predictor | None
                     ) -> tuple[TrainedModel, dict[str, float], dict[str, float], str]:
    """The CPU-heavy part, run in a thread: train, then score challenger and champion."""
    holdout = settings.refit.holdout_bars
    # The market-wide inputs, when configured, across every feed read (before the holdout split).
    frames, _ = attach_configured(frames, settings.model.features)
    train = [(key, frame[: len(frame) - holdout]) for key, frame in frames]
    training = settings.training.model_copy(update={"threads": settings.refit.threads})
    trained = train_model(train, settings.model, training, progress=quiet)
    challenger = ModelPredictor(trained.model, settings.model.name, "challenger")
    if champion is None:
        har = Har(interval_ms=frames[0][1].interval_ms)
        har.fit(train)
        champion = baseline_predictor("har", fitted=har)
        champion_name = "har baseline"
    else:
        champion_name = f"{champion.name} version {champion.version}"
    return (trained, holdout_scores(challenger, frames, holdout),
            holdout_scores(champion, frames, holdout), champion_name)


async def refit_once(settings: Settings, redis: aioredis.Redis) -> RefitOutcome:
    """One refit: train, compare, maybe promote; records the outcome in ``keys.refit()``."""
    keys = RedisKeys(settings.redis.key_prefix)
    store = ModelStore(settings.refit.model_dir)
    started = now_ms()
    try:
        outcome = await _refit(settings, redis, keys, store)
    except Exception as exc:  # a failed refit is reported and retried next time, never fatal
        log.exception("refit failed")
        outcome = RefitOutcome("failed", f"{type(exc).__name__}: {exc}")
    fields = {
        "last_run_ms": str(started),
        "finished_ms": str(now_ms()),
        "result": outcome.result,
        "message": outcome.message,
        "next_run_ms": str(started + settings.refit.every),
        "version": outcome.version or "",
    }
    await redis.hset(keys.refit(), mapping=field_mapping(fields))
    log.info("refit %s: %s", outcome.result, outcome.message)
    return outcome


def refusal(scores: dict[str, float]) -> str | None:
    """Why a challenger with these holdout scores must not serve, or None."""
    odd = sorted(name for name, value in scores.items() if not math.isfinite(value))
    if odd:
        return f"its {', '.join(odd)} {'is' if len(odd) == 1 else 'are'} not finite"
    if scores.get("out_of_bound", 0.0) > 0:
        return (f"{scores['out_of_bound']:.0f} of its forecasts on the held-back bars are not finite or out of "
                "the output guard's bound")
    return None


async def _refit(settings: Settings, redis: aioredis.Redis, keys: RedisKeys, store: ModelStore) -> RefitOutcome:
    refit = settings.refit
    # Values that cannot be real (a NaN bar in Redis) would make every score NaN for as long as
    # the bar is kept: training and scoring both read the cleaned bars.
    frames = [(k, clean_frame(f)) for k, f in await read_frames(redis, keys, configured_feeds(settings))]
    eligible = [(k, f) for k, f in frames if len(f) >= refit.min_bars]
    if not eligible:
        most = max((len(f) for _, f in frames), default=0)
        return RefitOutcome("skipped", f"no feed has refit.min_bars={refit.min_bars} bars yet (most: {most})")
    least = min_training_bars(settings.model, eligible[0][1].interval_ms)
    trainable = [(k, f) for k, f in eligible if len(f) - refit.holdout_bars >= least]
    if not trainable:
        most = max(len(f) for _, f in eligible)
        return RefitOutcome("skipped", f"too little data to train: {settings.model.name} needs {least} bars of one "
                            f"feed besides the refit.holdout_bars={refit.holdout_bars} held out, "
                            f"{least + refit.holdout_bars} in all (most: {most})")
    eligible = trainable
    record = await current_model(redis, keys)
    champion: Predictor | None = None
    if record is not None and store.has(record.version):
        try:
            champion = await asyncio.to_thread(load_predictor, store.path(record.version), settings.model)
        except Exception as exc:  # an unusable champion loses to any challenger
            log.warning("champion version %s cannot be loaded (%s): comparing with the baseline",
                        record.version, exc)
    trained, challenger, champ, champ_name = await asyncio.to_thread(_train_and_score, settings, eligible, champion)
    summary = (f"challenger rmse_log {challenger['rmse_log']:.4f} vs {champ_name} {champ['rmse_log']:.4f} "
               f"on the last {refit.holdout_bars} bars of {len(eligible)} feeds")
    refused = refusal(challenger)
    if refused is not None:
        log.warning("challenger refused: %s", refused)
        return RefitOutcome("kept", f"challenger refused, {refused}: {summary}", None, challenger, champ)
    if not challenger["rmse_log"] < champ["rmse_log"]:
        return RefitOutcome("kept", summary, None, challenger, champ)
    floor = int(record.version) + 1 if record is not None and record.version.isdigit() else 1
    version = store.next_version(at_least=floor)
    info = {"name": settings.model.name, "scores": challenger, "champion": champ_name,
            "champion_scores": champ, "feeds": [k for k, _ in eligible]}
    await asyncio.to_thread(store.write, version, lambda d: trained.save(d, version), info)
    await promote(redis, keys, ModelRecord(settings.model.name, version, challenger, now_ms()))
    pruned = store.prune(refit.keep, protect={version})
    if pruned:
        log.info("pruned model versions %s", ", ".join(pruned))
    return RefitOutcome("promoted", f"version {version} promoted: {summary}", version, challenger, champ)


def bars_needed(settings: Settings) -> int:
    """Bars one feed needs before a run can train: ``refit.min_bars``, and the model's minimum plus
    the held-out bars."""
    least = min_training_bars(settings.model, settings.bars.interval)
    return max(settings.refit.min_bars, least + settings.refit.holdout_bars)


async def _awaiting_first_model(redis: aioredis.Redis, keys: RedisKeys) -> bool:
    """No model serves yet, and no run trained one: none ran, or the last found too few bars."""
    result: Any = await redis.hget(keys.refit(), "result")
    return result in (None, b"skipped") and await current_model(redis, keys) is None


async def _bars_in(settings: Settings, redis: aioredis.Redis, keys: RedisKeys) -> tuple[int, ...] | None:
    """Every feed's bar count, or None while a feed's history is still loading."""
    feeds = configured_feeds(settings)
    pipe = redis.pipeline(transaction=False)
    for feed in feeds:
        pipe.xlen(keys.bars(feed))
        pipe.hget(keys.health(feed), _HISTORY_STATE)
    replies: list[Any] = await pipe.execute()
    if any(state == _LOADING for state in replies[1::2]):
        return None
    return tuple(int(n) for n in replies[0::2])


async def _until_first_model_data(settings: Settings, redis: aioredis.Redis, keys: RedisKeys, wait_ms: int,
                                  tried: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """Sleep ``wait_ms``, or less: until a feed has the bars a run needs (its history is in) and the
    counts differ from ``tried`` (those of an early run that was skipped anyway: no busy loop);
    or longer, for as long as a history is loading. Returns the counts an early run is started
    with (None: the schedule's run)."""
    deadline = time.monotonic() + wait_ms / 1000
    needed = bars_needed(settings)
    told = False
    while True:
        counts = await _bars_in(settings, redis, keys)
        if counts is not None and counts != tried and max(counts, default=0) >= needed:
            log.info("the feeds have their bars (%s): training the first model now", ", ".join(map(str, counts)))
            return counts
        left = deadline - time.monotonic()
        if counts is not None and left <= 0:
            return None
        if not told:
            told = True
            log.info("no model yet: the first refit runs once no history is loading and a feed has %d bars "
                     "(history included)%s", needed, f", at the latest in {left:.0f} s" if left > 0 else "")
        await asyncio.sleep(FIRST_MODEL_POLL_S if counts is None else min(FIRST_MODEL_POLL_S, left))


async def run(settings: Settings, *, once: bool = False) -> RefitOutcome | None:
    """The refit worker: one refit every ``refit.every`` (or exactly one with ``once``)."""
    keys = RedisKeys(settings.redis.key_prefix)
    metrics = RefitMetrics()
    served = settings.metrics.model_copy(update={"enabled": settings.metrics.enabled and not once})
    async with redis_client(settings.redis) as redis, serving_metrics(served, "refit", new_registry([metrics])):
        if once:
            return await refit_once(settings, redis)
        backoff = Backoff(1.0, 60.0)
        tried: tuple[int, ...] | None = None
        while True:
            raise_if_cancelled()  # redis-py can swallow a cancellation (forecaster/event_consumer.py)
            try:
                # Resume the schedule across restarts instead of retraining at every start.
                due: Any = await redis.hget(keys.refit(), "next_run_ms")
                wait_ms = int(due) - now_ms() if due else 0
                if await _awaiting_first_model(redis, keys):
                    tried = await _until_first_model_data(settings, redis, keys, max(0, wait_ms), tried)
                elif wait_ms > 0:
                    log.info("next refit in %.0f s", wait_ms / 1000)
                    await asyncio.sleep(wait_ms / 1000)
                started = time.monotonic()
                metrics.observe(await refit_once(settings, redis), time.monotonic() - started)
                backoff.reset()
            except (RedisError, OSError) as exc:
                delay = backoff.next_delay()
                log.warning("Redis unavailable (%s); retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)
