"""The forward passes of a boundary: which predictor serves which feeds (the model, or the fallback
baselines for feeds too short for it and before there is one), in chunks of at most PREDICT_CHUNK
feeds, run on the predictor thread or on the event loop's; a model that fails on a chunk is
replaced by the naive baseline for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

from forecaster.bar_reader import BarHistories, Histories
from forecaster.fallback import FallbackBaseline
from forecaster.features import Batch
from forecaster.feeds import feed_key
from forecaster.guard import GuardCounts
from forecaster.market import BoundaryMarket, at_boundary, features_read_by
from forecaster.predictor import Forecast, Predictor
from forecaster.serving import ModelSwap, Serving
from volcast.keys import Feed

log = logging.getLogger(__name__)

PREDICT_CHUNK = 256
"""Feeds per forward pass: the first chunk's predictions are published while the next computes
(the forward costs the same per feed from about 100 feeds per batch up)."""


class ForwardPasses:
    """The predictors of a boundary's feeds, and their forward passes."""

    def __init__(self, swap: ModelSwap, fallback: FallbackBaseline, naive: Predictor, guards: GuardCounts,
                 bars: BarHistories, executor: Executor, workers: Callable[[], int] = lambda: 1) -> None:
        self.swap = swap
        self.fallback = fallback
        self.naive = naive
        self.guards = guards
        self.bars = bars
        self._executor = executor
        # The live workers splitting the feeds (the event shards' split, forecaster/event_reads.py):
        # they share the fallback's refit budget (``FallbackBaseline.fit_feeds``).
        self.workers = workers
        self._feed_keys: dict[Feed, str] = {}
        # The market-wide inputs of the boundary being predicted (forecaster/market.py), computed
        # once per read of its bars; status says how many feeds the last aggregate had and left out.
        self._market: tuple[Histories, BoundaryMarket] | None = None
        self.market_feeds = 0
        self.market_left_out = 0

    def feed_key(self, feed: Feed) -> str:
        key = self._feed_keys.get(feed)
        if key is None:
            key = self._feed_keys[feed] = feed_key(feed)
        return key

    def fallback_serves(self, feeds: Sequence[Feed], histories: Histories) -> bool:
        model = self.swap.model
        if not feeds:
            return False
        if model is None or (self.guards.total and self.fallback.fits == 0):
            return True  # a guarded forecast is replaced by the fallback: it must be fitted
        history_length = model.predictor.history_length
        return any(history_length(n) is None for n in {histories.length(f) for f in feeds})

    def jobs(self, feeds: Sequence[Feed], histories: Histories) -> list[tuple[Serving, list[Feed], Batch]]:
        """The forward passes of a boundary: the model for the feeds it can serve (all of them,
        usually), the fallback baselines for the rest (or all, before a model), grouped by
        predictor and history length, in chunks of at most PREDICT_CHUNK feeds."""
        model = self.swap.model
        groups: dict[tuple[int, int], tuple[Serving, list[Feed]]] = {}
        for feed in feeds:
            available = histories.length(feed)
            length = model.predictor.history_length(available) if model is not None else None
            serving = model
            if serving is None or length is None:
                predictor = self.fallback.choose(available)
                serving = Serving(predictor, None)
                length = predictor.history_length(available)
                assert length is not None  # every ready feed holds at least its bar open_ms
            groups.setdefault((id(serving.predictor), length), (serving, []))[1].append(feed)
        if any(serving.baseline for serving, _ in groups.values()):
            self.fallback.served()
        return [(serving, group_feeds, self._with_market(serving, group_feeds, batch, histories))
                for (_, length), (serving, group) in groups.items()
                for group_feeds, batch in histories.batches(group, length, PREDICT_CHUNK)]

    def _with_market(self, serving: Serving, feeds: Sequence[Feed], batch: Batch, histories: Histories) -> Batch:
        """``batch`` with its market-wide inputs when the serving model reads them: the aggregate
        over every feed held with its bar of this boundary (one reduction per read of bars)."""
        features = features_read_by(serving.predictor)
        if not features:
            return batch
        cached = self._market
        if cached is None or cached[0] is not histories:
            market = at_boundary(histories.main, histories.open_ms, features)
            self._market = cached = (histories, market)
            self.market_feeds = len(market.rows)
            self.market_left_out = sum(1 for f in histories.ready if f not in market.rows)
        return dataclasses.replace(batch, market=cached[1].inputs(feeds, batch.volume.shape[1]))

    def start(self, serving: Serving, feeds: Sequence[Feed], batch: Batch, *, inline: bool
              ) -> asyncio.Future[list[Forecast]]:
        """Queue a forward pass on the predictor thread, or run it now (a small boundary: handing
        it to the thread and back costs two thread wake-ups, which took 2-10 ms each on a busy
        2-core machine, more than the 100-feed forward pass itself)."""
        loop = asyncio.get_running_loop()
        keys = [self.feed_key(f) for f in feeds]
        if not inline:
            return loop.run_in_executor(self._executor, serving.predictor.predict_batch, batch, keys)
        done: asyncio.Future[list[Forecast]] = loop.create_future()
        try:
            done.set_result(serving.predictor.predict_batch(batch, keys))
        except Exception as exc:  # results serves the naive baseline instead
            done.set_exception(exc)
        return done

    async def results(self, running: asyncio.Future[list[Forecast]], serving: Serving, feeds: Sequence[Feed],
                      batch: Batch) -> list[tuple[Forecast, Serving]]:
        try:
            return [(fc, serving) for fc in await running]
        except Exception as exc:  # a model that cannot serve these histories must not stop the others
            log.error("%s (version %s) failed on %d histories, serving the naive baseline: %s",
                      serving.predictor.name, serving.version or "baseline", len(feeds), exc)
            naive = Serving(self.naive, None)
            forecasts = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.naive.predict_batch, batch, [self.feed_key(f) for f in feeds])
            return [(fc, naive) for fc in forecasts]

    def fallback_too_narrow(self, feeds: Sequence[Feed]) -> bool:
        """The last fallback fit read far fewer feeds than ``feeds`` give (``FallbackBaseline.too_narrow``)."""
        return self.fallback.too_narrow(len(feeds), self.workers())

    async def refit_fallback(self, feeds: Sequence[Feed], histories: Histories) -> None:
        """Refit the fallback baselines on the histories at hand, beside the loop, between boundaries."""
        # The refit uses the longest histories, this worker's share of max_fit_feeds: copy only
        # those out of the matrix.
        longest = sorted(feeds, key=histories.length, reverse=True)[: self.fallback.fit_feeds(self.workers())]
        frames = [(self.feed_key(f), histories.frame(f, self.bars.look_back)) for f in longest]
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self.fallback.refit, frames)
        except Exception as exc:  # a failed refit keeps the previous fit, which still serves
            log.error("fallback baseline refit failed: %s", exc)
            return
        log.info("fallback baselines refitted on %d feeds (HAR %s)", len(frames),
                 "fitted" if self.fallback.har is not None else "not yet: histories too short")
