"""The next boundary's head start: once a boundary is out, the serving model computes ahead what
the next boundary's forward pass can reuse (the LSTM's state over the bars the next windows share
with these, forecaster/lstm_prefix.py), so that pass takes one LSTM step per feed.
docs/forecaster.md has the figures.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

from forecaster.bar_reader import BarHistories
from forecaster.features import Batch
from forecaster.handoffs import Handoffs
from forecaster.predictor import Predictor
from forecaster.serving import ModelSwap
from volcast.keys import Feed

log = logging.getLogger(__name__)


class Preparation:
    """``prepare``: the task that prepares the serving model for the feeds' next bars."""

    def __init__(self, swap: ModelSwap, bars: BarHistories, handoffs: Handoffs, executor: Executor,
                 feed_key: Callable[[Feed], str], timings: dict[str, float], interval_ms: int) -> None:
        self.swap = swap
        self.bars = bars
        self.handoffs = handoffs
        self._executor = executor
        self.feed_key = feed_key
        self.timings = timings
        self.interval_ms = interval_ms

    async def prepare(self) -> None:
        """Let the serving model compute ahead for the feeds' next bars (``Predictor.prepare``).

        Like the bookkeeping, it waits for the broker to confirm the boundary and for the whole
        boundary to be predicted (``Handoffs.until_out``).
        A boundary with a newer one queued behind it is skipped: only the newest bars can be the
        next windows' older bars.
        """
        while True:
            open_ms, ticket = await self.handoffs.prepares.get()
            if not self.handoffs.prepares.empty():
                continue
            await self.handoffs.until_out(open_ms, ticket)
            serving = self.swap.model
            if serving is None or not self.handoffs.prepares.empty():
                continue
            copied = self._prepare_batch(serving.predictor, open_ms)
            if copied is None:
                continue
            feeds, batch = copied
            started = time.perf_counter()
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self._executor, serving.predictor.prepare, batch, [self.feed_key(f) for f in feeds])
            except Exception as exc:  # the next boundary then reads whole windows: slower, not wrong
                log.error("preparing bar %d for %s failed: %s", open_ms + self.interval_ms, serving.predictor.name, exc)
                continue
            self.timings["prepare_ms"] = (time.perf_counter() - started) * 1000
            self.swap.prepared = (serving, open_ms)

    def _prepare_batch(self, predictor: Predictor, open_ms: int) -> tuple[list[Feed], Batch] | None:
        """A copy of the bars ``predictor.prepare`` reads, of every feed the model serves whose newest
        bar is ``open_ms`` (a copy: a boundary may write and shift the held bars meanwhile)."""
        length = predictor.prepare_bars
        matrix = self.bars.matrix
        if length <= 0:
            return None
        feeds = [f for f in matrix.ending_at(open_ms)
                 if predictor.history_length(matrix.available(f, open_ms)) is not None]
        if not feeds:
            return None
        ordered, view = matrix.batch(feeds, open_ms, length)
        return ordered, view.rows(np.arange(len(ordered)))
