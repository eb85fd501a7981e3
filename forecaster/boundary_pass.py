"""One boundary: every feed whose bar closed at the same time, read, predicted in batched forward
passes and handed to MQTT chunk by chunk; then queued for its Redis bookkeeping, its
acknowledgement and the next boundary's head start (forecaster/handoffs.py).

The critical path of a boundary is: read one new bar per feed (``BarHistories``: the bars are
held in memory), forward passes over views of the held bars in chunks (forecaster/forward_passes.py),
each chunk handed to MQTT as soon as it is computed. A forecast the output guard replaced is
published as the feed's fallback baseline; forecasts made again from a revised bar say so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence

from redis.exceptions import RedisError

from forecaster.bar_reader import BarHistories, Histories
from forecaster.calibration_store import Calibration
from forecaster.event_reads import READ_COUNT, ShardReader
from forecaster.events import Event, EventParser
from forecaster.fallback import FallbackBaseline
from forecaster.forward_passes import ForwardPasses
from forecaster.guard import GuardCounts, clean_volume
from forecaster.guard_fallback import baseline_forecasts
from forecaster.handoffs import BoundaryRecord, Handoffs
from forecaster.late_events import LateEvents
from forecaster.payload import Guarded, Prediction, encode_all
from forecaster.predictor import Forecast, Predictor
from forecaster.publisher import Publisher, Ticket
from forecaster.serving import ModelSwap, Serving
from forecaster.wall_clock import now_ms
from forecaster.worker_counts import WorkerCounts
from volcast.keys import Feed, forecast_topic
from volcast.settings import Settings

log = logging.getLogger(__name__)

INLINE_MAX = 128
"""A boundary of at most this many feeds (one forward pass) is predicted on the event loop's
thread: about 3 ms for 100 feeds, less than the round trip to the predictor thread."""


class BoundaryPass:
    """The boundaries of one worker, one at a time (the consume task runs them)."""

    def __init__(self, settings: Settings, publisher: Publisher, bars: BarHistories, reader: ShardReader,
                 streams: Sequence[str], events: EventParser, swap: ModelSwap, passes: ForwardPasses,
                 calibration: Calibration | None, late: LateEvents, handoffs: Handoffs, counts: WorkerCounts
                 ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.bars = bars
        self.reader = reader
        self.streams = streams
        self.events = events
        self.swap = swap
        self.passes = passes
        self.fallback: FallbackBaseline = passes.fallback
        self.naive: Predictor = passes.naive
        self.guards: GuardCounts = passes.guards
        self._feed_key = passes.feed_key
        self.calibration = calibration
        self.late = late
        self.handoffs = handoffs
        self.counts = counts
        self.interval_ms = settings.bars.interval
        self._topics: dict[Feed, str] = {}
        self.predicted: dict[Feed, int] = {}  # the bar each feed was last predicted from
        # Feeds predicted again from a revised bar -> (the bar, its revision)
        self._revising: dict[Feed, tuple[int, int]] = {}

    def revise(self, feed: Feed, open_ms: int, rev: int) -> None:
        """The next forecast of ``feed`` from bar ``open_ms`` is made again from its revision ``rev``."""
        self._revising[feed] = (open_ms, rev)

    def read_done(self) -> None:
        """The events of one read are handled: revisions not predicted are forgotten."""
        self._revising.clear()

    async def boundary(self, open_ms: int, events: Sequence[Event]) -> None:
        """Every feed whose bar ``open_ms`` closed: one read, forward passes, hand-overs to MQTT.

        The forward passes run in chunks of PREDICT_CHUNK feeds, all queued at once on the
        predictor thread: while it computes the next chunk, the loop hands the previous one's
        predictions to MQTT, so the first predictions leave before the last are computed. While
        chunks are still computing, the loop also looks for more events of the same bar (the
        streamer writes 500 bars per transaction: 1000 feeds arrive as two batches) and queues
        their chunks right behind, instead of starting a second boundary after this one.

        The held bars are only written by this method (the consume task runs one boundary at a
        time), so the batches given to the predictor thread are views that stay valid meanwhile:
        a later batch of the same bar writes other feeds' rows of the same column.
        """
        # Busy for one boundary, not for a whole read: a read of a backlog spans thousands of
        # boundaries, and the bookkeeping waiting for the end of it (up to RECORD_DEFER_S each)
        # held every acknowledgement back until the other worker claimed the events (soak).
        self.handoffs.idle.clear()
        try:
            await self._boundary(open_ms, events)
        finally:
            self.handoffs.idle.set()

    async def _boundary(self, open_ms: int, events: Sequence[Event]) -> None:
        started = time.perf_counter()
        events = list(events)
        feeds = list(dict.fromkeys(e.feed for e in events if e.feed is not None))
        full_reads = self.bars.full_reads
        histories = await self.bars.at(feeds, open_ms, _carried_by(events, open_ms))
        if self.bars.full_reads != full_reads:
            self.handoffs.settle_due = True  # lasting state was built: freeze it, see heap.py
        if self.calibration is not None:  # a round trip only for feeds new to this process
            await self.calibration.ensure(histories.ready)
        read = time.perf_counter()
        ready = histories.ready
        if len(ready) < len(feeds):
            log.warning("%d of %d bars at %d are not in Redis; their events are acknowledged",
                        len(feeds) - len(ready), len(feeds), open_ms)
        # The very first fit serves at once; so does one that read far fewer feeds than this
        # boundary holds (a first boundary of one event): its forecasts would go to the guard.
        if ((self.fallback.fits == 0 or self.passes.fallback_too_narrow(ready))
                and self.passes.fallback_serves(ready, histories)):
            await self.passes.refit_fallback(ready, histories)
        jobs = [(*job, histories) for job in self.passes.jobs(ready, histories)]
        # Prepared (one LSTM step per feed) or small, the forward passes run on this thread one
        # chunk at a time; otherwise they are all queued on the predictor thread at once.
        inline = self.swap.was_prepared(open_ms, self.interval_ms) or (len(jobs) == 1 and len(jobs[0][1]) <= INLINE_MAX)
        running = [] if inline else [self.passes.start(sv, g, b, inline=False) for sv, g, b, _ in jobs]
        seen = set(feeds)
        record = BoundaryRecord(open_ms, [], [], [], [], {}, asyncio.Event(), {})
        ticket = record.ticket
        submit_s = 0.0
        i = 0
        while i < len(jobs):
            serving, group, batch, held = jobs[i]
            if inline:
                running.append(self.passes.start(serving, group, batch, inline=True))
            results = await self.passes.results(running[i], serving, group, batch)
            handed = time.perf_counter()
            ticket.update(self._hand_over(open_ms, group, results, held, record))
            submit_s += time.perf_counter() - handed
            i += 1
            # Inline, the next chunk follows at once (the hand-over has written this one to the
            # broker); the rest of the bar's events, if any, are the consume loop's next read.
            # A look-ahead read here cost a Redis round trip per chunk (up to 30 ms when busy).
            if i < len(jobs) and not inline:
                more = await self._more_of(open_ms, seen, events)
                if more is not None:
                    jobs += [(*job, more) for job in self.passes.jobs(more.ready, more)]
                    running += [self.passes.start(sv, g, b, inline=False) for sv, g, b, _ in jobs[len(running):]]
        done = time.perf_counter()
        record.timings.update(read_ms=(read - started) * 1000, predict_ms=(done - read - submit_s) * 1000,
                              submit_ms=submit_s * 1000)
        self.counts.timings.update(record.timings)
        self.handoffs.records.put_nowait(record)
        self.handoffs.acks.put_nowait((ticket, [(e.shard, e.entry_id) for e in events], record.done))
        if self.handoffs.newest_ms is None or open_ms >= self.handoffs.newest_ms:
            self.handoffs.newest_ms = open_ms
            self.handoffs.prepares.put_nowait((open_ms, ticket))
        self.counts.batches += 1
        self.counts.duplicate_events += len(events) - len(seen)  # a feed's event twice in one read
        self.counts.predictions += len(record.predictions)
        predicted = self.predicted
        for prediction in record.predictions:
            predicted[prediction.feed] = open_ms
        # After the hand-over, off the boundary's latency:
        if self.fallback.refit_due and self.passes.fallback_serves(ready, histories):
            await self.passes.refit_fallback(ready, histories)
        self.bars.make_room(open_ms + self.interval_ms)

    async def _more_of(self, open_ms: int, seen: set[Feed], events: list[Event]) -> Histories | None:
        """Events of bar ``open_ms`` that arrived meanwhile (added to ``events``), and their bars.

        Events of other bars wait in ``Handoffs.stash`` for the consume loop. A Redis error only ends the
        look-ahead: this boundary is already being published, and what was read is processed by
        the consume loop (from the stash) after it.
        """
        try:
            read = await self.reader.read(dict.fromkeys(range(len(self.streams)), ">"), READ_COUNT)
        except (RedisError, OSError) as exc:
            log.debug("no look-ahead for bar %d: %s", open_ms, exc)
            return None
        same: list[Event] = []
        for event in (self.events.parse(i, f, shard) for shard, entries in read for i, f in entries if f):
            (same if event.feed is not None and event.open_time_ms == open_ms else self.handoffs.stash).append(event)
        if not same:
            return None
        fresh = [f for f in dict.fromkeys(e.feed for e in same if e.feed is not None) if f not in seen]
        try:
            more = await self.bars.at(fresh, open_ms, _carried_by(same, open_ms))
        except (RedisError, OSError) as exc:
            log.debug("look-ahead bars of bar %d not read: %s", open_ms, exc)
            self.handoffs.stash += same
            return None
        events += same  # acknowledged with this boundary (a repeated event of a feed: not predicted twice)
        seen.update(fresh)
        if len(more.ready) < len(fresh):
            log.warning("%d of %d bars at %d are not in Redis; their events are acknowledged",
                        len(fresh) - len(more.ready), len(fresh), open_ms)
        return more

    def _hand_over(self, open_ms: int, feeds: Sequence[Feed], results: Sequence[tuple[Forecast, Serving]],
                   histories: Histories, record: BoundaryRecord) -> Ticket:
        """Predictions of one chunk to MQTT; kept in ``record`` for the Redis bookkeeping.

        A forecast the output guard replaced (``Forecast.guard``: the model's own was not finite,
        negative, out of bound or had quantiles out of order, forecaster/guard.py) is published as
        the feed's fallback baseline on the same bars, or naive, with the reason in the payload.
        """
        created = now_ms()
        last_volumes = histories.last_volumes(feeds)
        if not all(0.0 <= v < math.inf for v in last_volumes):
            # A bar volume that is not a volume (NaN, inf, negative: a bad bar in Redis) counts as none.
            last_volumes = [clean_volume(v) for v in last_volumes]
        latest = [histories.latest(feed) for feed in feeds]
        guards: dict[int, Guarded] = {}
        if any(forecast.guard is not None for forecast, _ in results):
            results, guards = self._replace_guarded(open_ms, feeds, results, histories, created)
        forecasts = [forecast for forecast, _ in results]
        bands = (self.calibration.bands(feeds, forecasts) if self.calibration is not None
                 else [(forecast.quantiles, None, False) for forecast in forecasts])
        curves = (self.calibration.horizon_bands(feeds, forecasts, open_ms) if self.calibration is not None
                  else [None] * len(forecasts))
        predictions = [
            Prediction(
                feed=feed,
                open_time_ms=open_ms + feed.interval_ms,
                last_bar_ms=open_ms,
                last_volume=last_volume,
                volume=forecast.volume,
                quantiles=published,
                model_name=serving.predictor.name,
                model_version=serving.predictor.version if serving.version else "baseline",
                baseline=serving.baseline,
                created_ms=created,
                horizons=forecast.horizons if curve is None else curve,
                calibrated=calibrated,
                raw_quantiles=raw,
                horizons_calibrated=curve is not None,
            )
            for feed, last_volume, (forecast, serving), (published, raw, calibrated), curve
            in zip(feeds, last_volumes, results, bands, curves, strict=True)
        ]
        for i, guard in guards.items():
            predictions[i] = dataclasses.replace(predictions[i], guard=guard)
        if self._revising:  # rare: forecasts made again from a revised bar say so
            self._mark_revisions(predictions)
        # Once: MQTT and both Redis records use it. A payload holding a number that is not finite
        # is refused (None, logged): the last line behind the guard, nothing of it is published.
        encoded = encode_all(predictions)
        if None in encoded:
            kept = [i for i, payload in enumerate(encoded) if payload is not None]
            predictions, latest = [predictions[i] for i in kept], [latest[i] for i in kept]
            last_volumes = [last_volumes[i] for i in kept]
        payloads = [payload for payload in encoded if payload is not None]
        ticket = self.publisher.submit([(self._topic(p.feed), payload)
                                        for p, payload, newest in zip(predictions, payloads, latest, strict=True)
                                        if newest])
        record.predictions.extend(predictions)
        record.payloads.extend(payloads)
        record.latest.extend(latest)
        record.last_volumes.extend(last_volumes)
        return ticket

    def _mark_revisions(self, predictions: list[Prediction]) -> None:
        revising = self._revising
        for i, p in enumerate(predictions):
            bar, rev = revising.get(p.feed, (None, 0))
            if bar == p.last_bar_ms:
                del revising[p.feed]
                predictions[i] = dataclasses.replace(p, revision=rev)
                self.late.revised += 1

    def _replace_guarded(self, open_ms: int, feeds: Sequence[Feed], results: Sequence[tuple[Forecast, Serving]],
                         histories: Histories, created: int
                         ) -> tuple[list[tuple[Forecast, Serving]], dict[int, Guarded]]:
        """The guarded forecasts (rare) replaced by the fallback baseline on the same bars, then
        EWMA, then naive; each with what the payload says about it, keyed by its index in ``feeds``.
        A guarded forecast of the fallback's HAR (serving where there is no model) gets EWMA's, not
        naive's: a HAR fitted on too few feeds once sent thousands of a pool's forecasts to the
        naive one for an hour (docs/benchmarks.md, 2026-12-07)."""
        out = list(results)
        failed = [i for i, (forecast, _) in enumerate(results) if forecast.guard is not None]
        ewma = self.fallback.ewma
        retry = [i for i in failed if not results[i][1].baseline]
        redone = dict(zip(retry, baseline_forecasts([feeds[i] for i in retry], histories, self.fallback.choose,
                                                    self.naive, self._feed_key, then=ewma), strict=True))
        har = [i for i in failed if results[i][1].baseline and results[i][1].predictor.name == "har"]
        redone.update(zip(har, baseline_forecasts([feeds[i] for i in har], histories, lambda _: ewma,
                                                  self.naive, self._feed_key), strict=True))
        guards: dict[int, Guarded] = {}
        for i in failed:
            forecast, serving = results[i]
            guards[i] = Guarded(forecast.guard or "", serving.predictor.name,
                                serving.predictor.version if serving.version else "baseline")
            replacement, predictor = redone.get(i, (forecast, self.naive))
            out[i] = (replacement, Serving(predictor, None))
            if self.guards.add(self._feed_key(feeds[i]), guards[i].reason, created) == 1:
                log.warning("%s: %s %s forecast of bar %d guarded (%s), %s serves it instead",
                            self._feed_key(feeds[i]), guards[i].model_name, guards[i].model_version,
                            open_ms + self.interval_ms, guards[i].reason, predictor.name)
        return out, guards

    def _topic(self, feed: Feed) -> str:
        topic = self._topics.get(feed)
        if topic is None:
            topic = self._topics[feed] = forecast_topic(self.settings.mqtt.topic_prefix, feed)
        return topic


def _carried_by(events: Sequence[Event], open_ms: int) -> dict[Feed, Mapping[bytes, bytes]]:
    """The fields of the events of bar ``open_ms`` that may carry its values (not a revision's:
    the bar changed since the values it first had)."""
    return {e.feed: e.fields for e in events if e.feed is not None and not e.rev and e.open_time_ms == open_ms}
