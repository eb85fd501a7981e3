"""``volcast forecast``: bar-closed events in, one batched forecast per boundary, predictions out.

The worker reads the bar-closed events of its interval with a Redis consumer group, so several
workers share the feeds and a dead worker's events are claimed by another (XAUTOCLAIM after
``forecaster.claim_idle``). Events of one boundary become batched forward passes, run in a
single thread beside the event loop (or on the loop's thread for a small boundary). Predictions
go to MQTT (retained, per feed) and then to Redis; an event is acknowledged only once its
predictions are confirmed by the broker and recorded, so no bar is skipped.

The critical path of a boundary is: read the events (a blocking read, then whatever else has
arrived, so a burst of closes is one batch), read one new bar per feed (``BarHistories``: the
bars are held in memory), forward passes over views of the held bars in chunks, each chunk
handed to MQTT as soon as it is computed. The Redis bookkeeping (``Recorder``: predictions,
realised errors, live scores, status) runs in its own task after the hand-over, in boundary
order, and waits while a boundary is being predicted. So does ``prepare``: once a boundary is
out, the model computes ahead what the next boundary's forward pass can reuse (the LSTM's state
over the bars the next windows share with these, forecaster/lstm_prefix.py), so that pass takes
one LSTM step per feed. docs/forecaster.md has the figures.

The serving model is the version named in ``keys.model()``; it is polled between batches and
swapped in between two boundaries, never during one. Until a model exists, and for feeds too
short for it, ``FallbackBaseline`` serves (HAR refitted on the live histories, EWMA for short
ones), marked ``baseline`` in the payload with the baseline's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from forecaster import heap
from forecaster.bar_reader import BarHistories, Histories
from forecaster.calibration_store import Calibration
from forecaster.dead_letters import DeadLetters
from forecaster.demotion import DemotionWatch
from forecaster.demotion_store import Demoter
from forecaster.event_reads import Entries, ShardReader
from forecaster.events import Event, EventParser
from forecaster.fallback import FallbackBaseline
from forecaster.features import Batch
from forecaster.feeds import feed_key
from forecaster.guard import GuardCounts, clean_volume
from forecaster.guard_fallback import baseline_forecasts
from forecaster.horizons import resolve as resolve_horizons
from forecaster.late_events import LateEvents, Triage
from forecaster.market import BoundaryMarket, at_boundary, features_read_by
from forecaster.metrics import serve_metrics
from forecaster.model_store import ModelStore, current_version
from forecaster.payload import Guarded, Prediction, encode_all
from forecaster.predictor import Forecast, Predictor, baseline_predictor, load_predictor
from forecaster.publisher import Publisher, Ticket
from forecaster.recorder import Recorder
from volcast.aio import raise_if_cancelled
from volcast.backoff import Backoff
from volcast.connections import redis_client
from volcast.keys import Feed, RedisKeys, forecast_topic
from volcast.redis_problems import TRANSIENT, RedisDataProblem, first_of, key_problem, wrong_type
from volcast.redis_text import as_text
from volcast.settings import Settings

log = logging.getLogger(__name__)

MODEL_POLL_S = 1.0
READ_COUNT = 10_000
BLOCK_MS = 1_000
HEARTBEAT_S = 5.0
RECORD_DEFER_S = 1.0
"""The longest the Redis bookkeeping of a published boundary waits for the worker to be idle."""
RECORD_AFTER_PUBLISH_S = 0.25
"""... and for the broker to confirm its predictions (it starts once both are done)."""
PREDICT_CHUNK = 256
"""Feeds per forward pass: the first chunk's predictions are published while the next computes
(the forward costs the same per feed from about 100 feeds per batch up)."""
INLINE_MAX = 128
"""A boundary of at most this many feeds (one forward pass) is predicted on the event loop's
thread: about 3 ms for 100 feeds, less than the round trip to the predictor thread."""


def _enc(fields: Mapping[str, str]) -> dict[Any, Any]:
    # redis-py types field mappings with an invariant key type that a dict[str, str] never matches.
    return cast(dict[Any, Any], fields)


def _torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class _Record:
    """A published boundary waiting for its Redis bookkeeping; ``done`` releases its acks."""

    open_ms: int
    predictions: list[Prediction]
    payloads: list[bytes]
    latest: list[bool]
    last_volumes: list[float]
    timings: dict[str, float]
    done: asyncio.Event
    ticket: dict[str, int]


@dataclass(frozen=True, slots=True)
class Serving:
    """A predictor and where it came from (``version`` None = a baseline)."""

    predictor: Predictor
    version: str | None

    @property
    def baseline(self) -> bool:
        return self.version is None


class Worker:
    """The state of one forecaster process; ``run`` wires it to its connections."""

    def __init__(self, settings: Settings, redis: aioredis.Redis, publisher: Publisher,
                 consumer: str | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self.publisher = publisher
        self.keys = RedisKeys(settings.redis.key_prefix)
        self.consumer = consumer or settings.forecaster.consumer or default_consumer()
        self.interval_ms = settings.bars.interval
        # The event shards this worker's group reads (redis.event_shards; shard 0 names them in logs).
        self.streams = self.keys.event_streams(self.interval_ms, settings.redis.event_shards)
        self.stream = self.streams[0]
        self.group = settings.forecaster.group
        self.store = ModelStore(settings.refit.model_dir)
        self.fallback = FallbackBaseline(horizons=resolve_horizons(settings.model, self.interval_ms))
        self.model: Serving | None = None  # the model in keys.model(); None until there is one
        self.naive = baseline_predictor("naive")
        self.guards = GuardCounts()  # forecasts the output guard replaced (status: guarded, ...)
        self.bars = BarHistories(redis, self.keys, self.interval_ms, self.fallback.look_back)
        self.recorder = Recorder(redis, self.keys, kept=settings.forecaster.predictions_kept,
                                 score_window=settings.forecaster.score_window)
        # Calibrated bands: the state is read at a boundary, used at the hand-over, learnt in the bookkeeping.
        self.calibration: Calibration | None = None
        if settings.forecaster.calibrate_bands:
            every = settings.forecaster.calibrate_horizons
            spec = resolve_horizons(settings.model, self.interval_ms) if every else None
            self.calibration = self.recorder.calibration = Calibration(redis, self.keys, self.interval_ms, spec)
        if settings.forecaster.demotion_window:  # self-demotion, fed and applied by the bookkeeping
            self.recorder.demoter = Demoter(redis, self.keys, self.store, DemotionWatch(
                settings.forecaster.demotion_window, settings.forecaster.demotion_ratio))
        self._records: asyncio.Queue[_Record] = asyncio.Queue()
        # Boundaries published (bar open time, their MQTT ticket) whose next one can be prepared.
        self._prepares: asyncio.Queue[tuple[int, Ticket]] = asyncio.Queue()
        self._newest_ms: int | None = None  # the newest boundary predicted
        self._prepared: tuple[Serving, int] | None = None  # the model and boundary last prepared
        # (ticket, [(event shard, entry id)], recorded): acknowledged once published and recorded.
        self._acks: asyncio.Queue[tuple[Ticket, list[tuple[int, bytes]], asyncio.Event | None]] = asyncio.Queue()
        self._topics: dict[Feed, str] = {}
        self._stash: list[Event] = []  # events read ahead that belong to a later boundary
        self._idle = asyncio.Event()  # set while no boundary is being processed
        self._idle.set()
        self._boundary_done = asyncio.Event()  # replaced by a fresh one as each batch ends
        self._settle_due = True  # imports and the connections are lasting state too
        self._feed_keys: dict[Feed, str] = {}
        self.events = EventParser(self.interval_ms, frozenset(settings.feeds()))
        self.dead = DeadLetters(redis, self.keys, self.interval_ms, self.group, self.consumer,
                                settings.redis.event_shards)
        self.reader = ShardReader(redis, self.streams, self.group, self.consumer, alive_key=self.keys.consumer_alive,
                                  claim_idle_ms=settings.forecaster.claim_idle)
        self._dead_after = settings.forecaster.dead_letter_after
        # Feeds whose event failed recently: handled apart, so one bad feed does not send every
        # boundary through the split-and-retry of a failure.
        self._suspects: set[Feed] = set()
        self._predicted: dict[Feed, int] = {}  # the bar each feed was last predicted from
        self.late = LateEvents()  # revised bars and late events (forecaster/late_events.py)
        # Feeds predicted again from a revised bar -> (the bar, its revision)
        self._revising: dict[Feed, tuple[int, int]] = {}
        self.invalid_events = 0
        self.duplicate_events = 0
        self.handling_errors = 0
        self._model_error_logged = False
        # torch's thread count is per OS thread (OpenMP): set it inside the thread that predicts,
        # or that thread uses every core and fights Redis, Mosquitto and the event loop for them.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forecast",
                                            initializer=_torch_threads, initargs=(settings.forecaster.threads,))
        _torch_threads(settings.forecaster.threads)  # and for small boundaries predicted inline
        self._failed_version: str | None = None
        self._last_poll = 0.0
        self._last_claim = 0.0
        claim_idle = settings.forecaster.claim_idle
        self._claim_every_s = claim_idle / 4000
        # The read blocks no longer than the claim cadence, so a dead worker's events are claimed
        # within about claim_idle * 1.25: before the feed's next bar when claim_idle < interval.
        self._block_ms = max(20, min(BLOCK_MS, claim_idle // 4))
        self.batches = 0
        self.predictions = 0
        self.record_errors = 0
        self.timings: dict[str, float] = {}
        # Called with each published boundary's predictions and timings once recorded (metrics).
        self.recorded: list[Callable[[Sequence[Prediction], Mapping[str, float]], None]] = []
        # The market-wide inputs of the boundary being predicted (forecaster/market.py), computed
        # once per read of its bars; status says how many feeds the last aggregate had and left out.
        self._market: tuple[Histories, BoundaryMarket] | None = None
        self.market_feeds = 0
        self.market_left_out = 0

    # -- the loop ---------------------------------------------------------------------------

    async def consume(self) -> None:
        """Read, forecast, publish; Redis outages are retried with backoff, never fatal.

        A Redis answer that retrying cannot cure on the events stream itself (a key of the wrong
        type) ends the service with one message naming the key (``RedisDataProblem``). A failure
        in handling events never reaches this loop: ``process`` retries them apart and
        dead-letters those that keep failing.
        """
        backoff = Backoff(0.1, 5.0)
        # After a restart under a fixed consumer name, our own pending list comes first: read on
        # from the last entry read (from "0" each time, a batch whose acks were still on their
        # way was read and handled again, and new events were never reached). Per event shard.
        pending_from: dict[int, str] = dict.fromkeys(range(len(self.streams)), "0")
        group_ready = False  # created once, and again when Redis says it lost it (NOGROUP)
        try:
            while True:
                raise_if_cancelled()
                try:
                    if not group_ready:
                        await self.ensure_group()
                        group_ready = True
                    await self.poll_model()
                    if self._stash:
                        stashed, self._stash = self._stash, []
                        await self.process(stashed)
                        continue
                    if time.monotonic() - self._last_claim >= self._claim_every_s:
                        await self.claim()
                    if pending_from:
                        read = await self.reader.read(pending_from, READ_COUNT)
                        for shard in [k for k in pending_from if k not in dict(read)]:
                            del pending_from[shard]  # its pending list is read
                        events = []
                        for shard, entries in read:
                            pending_from[shard] = as_text(entries[-1][0])
                            events += await self._events_of(shard, await self._redelivered(shard, entries))
                    else:
                        # redis-py can return a blocking read's reply to a task being cancelled (seen
                        # in tests: the worker then read on for ever). What it read stays pending.
                        read = await self.reader.read(dict.fromkeys(range(len(self.streams)), ">"), READ_COUNT,
                                                      block=self._block_ms)
                        if read:
                            read += await self._drain(READ_COUNT - sum(len(entries) for _, entries in read))
                        events = [e for shard, entries in read for e in await self._events_of(shard, entries)]
                    await self.process(events)
                    backoff.reset()
                except ResponseError as exc:
                    group_ready = False
                    if "NOGROUP" in str(exc):
                        continue  # Redis lost the group (restart without persistence): create it again
                    raise key_problem(self.stream, exc, expected="stream of bar-closed events") from None
                except TRANSIENT as exc:
                    group_ready = False  # a Redis that restarted may have lost it
                    await self._retry(backoff, exc)
        finally:
            self.reader.close()

    async def _events_of(self, shard: int, entries: Sequence[Any]) -> list[Event]:
        """Entries of one event shard as events; an entry without fields (deleted from the stream
        while pending) is acknowledged, or it would stay in the pending list for ever."""
        gone = [entry_id for entry_id, fields in entries if not fields]
        if gone:
            await self.redis.xack(self.streams[shard], self.group, *gone)
        return [self.events.parse(i, f, shard) for i, f in entries if f]

    async def _redelivered(self, shard: int, entries: list[Any]) -> list[Any]:
        """Our own pending entries, read again after a restart: those delivered more than
        ``dead_letter_after`` times are dead-lettered (every worker that took them stopped before
        acknowledging: a crash loop must not go on for ever), the rest handled again."""
        rows: Any = await self.redis.xpending_range(self.streams[shard], self.group, min=entries[0][0],
                                                    max=entries[-1][0], count=len(entries),
                                                    consumername=self.consumer)
        tired = {row["message_id"]: row["times_delivered"] for row in rows
                 if row["times_delivered"] > self._dead_after}
        if not tired:
            return entries
        await self._bury_redelivered(shard, [(i, f) for i, f in entries if i in tired], tired)
        return [(i, f) for i, f in entries if i not in tired]

    async def _bury_redelivered(self, shard: int, entries: Sequence[Any], delivered: Mapping[bytes, int]) -> None:
        events = await self._events_of(shard, entries)
        await self.dead.bury([
            (e, e.problem or f"delivered {delivered[e.entry_id]} times without being acknowledged: "
                             "each worker that took it stopped before it was done", delivered[e.entry_id])
            for e in events])

    async def _drain(self, room: int) -> list[tuple[int, Entries]]:
        """What else has arrived, without blocking: a blocked read returns as soon as the first
        event of a burst is written (Redis serves it after that one command), and the rest of
        the burst belongs in the same batch rather than in a second forward pass after it."""
        out: list[tuple[int, Entries]] = []
        while room > 0:
            try:
                read = await self.reader.read(dict.fromkeys(range(len(self.streams)), ">"), room)
            except TRANSIENT as exc:
                # What the blocking read and the drain so far delivered is pending with us and
                # must be handled; the outage shows again at the next read.
                log.debug("drain stopped: %s", exc)
                break
            if not read:
                break
            out += read
            room -= sum(len(entries) for _, entries in read)
        return out

    async def _retry(self, backoff: Backoff, exc: BaseException) -> None:
        delay = backoff.next_delay()
        log.warning("Redis unavailable (%s); retrying in %.1fs", exc, delay)
        await asyncio.sleep(delay)

    async def ensure_group(self) -> None:
        for stream in self.streams:
            try:
                # From "0": a group created after the streamer started still sees every event.
                await self.redis.xgroup_create(stream, self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def claim(self) -> None:
        """Take over events another consumer has held longer than ``claim_idle`` when it died,
        hangs or cannot publish.

        XPENDING with IDLE, then XCLAIM of other consumers' entries only: XAUTOCLAIM would also
        hand a worker back its own idle entries, resetting their idle time, so a worker that
        cannot publish would keep its events forever instead of letting a healthy one take them.
        """
        self._last_claim = time.monotonic()
        for shard in range(len(self.streams)):
            await self._claim(shard)

    async def _claim(self, shard: int) -> None:
        stream = self.streams[shard]
        idle = self.settings.forecaster.claim_idle
        rows: Any = await self.redis.xpending_range(stream, self.group, min="-", max="+",
                                                    count=READ_COUNT, idle=idle)
        rows = [row for row in rows if as_text(row["consumer"]) != self.consumer]
        if not rows:
            return
        # Only from a worker that is gone or cannot publish (its alive key, see ``heartbeat``): a
        # healthy worker that is merely behind keeps its events (two workers claiming each
        # other's backlog did all of it twice, and fell further behind).
        owners = sorted({as_text(row["consumer"]) for row in rows})
        reads = self.redis.pipeline(transaction=False)  # GETs, not an MGET: on a cluster the keys are apart
        for owner in owners:
            reads.get(self.keys.consumer_alive(owner))
        alive = dict(zip(owners, await reads.execute(), strict=True))
        rows = [row for row in rows if alive[as_text(row["consumer"])] != b"1"]
        theirs = [row["message_id"] for row in rows]
        if not theirs:
            return
        # XCLAIM delivers them once more: past dead_letter_after deliveries they are set aside,
        # when the worker that held them is gone (it died on them, again), not merely offline.
        delivered = {row["message_id"]: row["times_delivered"] + 1 for row in rows
                     if row["times_delivered"] + 1 > self._dead_after and alive[as_text(row["consumer"])] is None}
        entries: Any = await self.redis.xclaim(stream, self.group, self.consumer, idle, theirs)
        claimed = {entry_id for entry_id, _ in entries}
        gone = [i for i in theirs if i not in claimed]
        if gone:  # trimmed from the stream before anyone processed them
            await self.redis.xack(stream, self.group, *gone)
        if delivered:
            await self._bury_redelivered(shard, [(i, f) for i, f in entries if i in delivered], delivered)
            entries = [(i, f) for i, f in entries if i not in delivered]
        events = await self._events_of(shard, entries)
        if events:
            log.info("claimed %d pending events of other consumers", len(events))
            await self.process(events)

    async def acknowledge(self) -> None:
        """XACK each batch once its predictions are out, in order."""
        backoff = Backoff(0.1, 5.0)
        while True:
            ticket, ids, recorded = await self._acks.get()
            await self.publisher.published(ticket)
            if recorded is not None:
                await recorded.wait()
            while True:
                raise_if_cancelled()
                try:
                    if len(self.streams) == 1:
                        await self.redis.xack(self.stream, self.group, *[i for _, i in ids])
                    else:
                        by_shard: dict[int, list[bytes]] = {}
                        for shard, entry_id in ids:
                            by_shard.setdefault(shard, []).append(entry_id)
                        pipe = self.redis.pipeline(transaction=False)
                        for shard, shard_ids in by_shard.items():
                            pipe.xack(self.streams[shard], self.group, *shard_ids)
                        await pipe.execute()
                    backoff.reset()
                    break
                except (RedisError, OSError) as exc:
                    await self._retry(backoff, exc)

    async def heartbeat(self) -> None:
        """The status hash every HEARTBEAT_S, and this consumer's alive key more often than it
        expires (``claim_idle``): the other workers claim a worker's pending events only once its
        key is gone (it died or hangs) or says "0" (it cannot reach its broker)."""
        claim_idle = self.settings.forecaster.claim_idle
        every_s = min(HEARTBEAT_S, claim_idle / 3000)
        alive_key = self.keys.consumer_alive(self.consumer)
        last_status = -HEARTBEAT_S
        while True:
            raise_if_cancelled()
            try:
                pipe = self.redis.pipeline(transaction=False)
                pipe.set(alive_key, "1" if self.publisher.connected else "0", px=claim_idle)
                if time.monotonic() - last_status >= HEARTBEAT_S:
                    pipe.hset(self.keys.forecaster(), mapping=_enc(self.status()))
                    last_status = time.monotonic()
                await pipe.execute()
            except (RedisError, OSError) as exc:
                log.debug("heartbeat not written: %s", exc)
            await asyncio.sleep(every_s)

    def status(self) -> dict[str, str]:
        model = self.model
        # The serving model's forecasts since it was loaded: one LSTM step from a prepared state,
        # or a whole window (a feed that was not prepared, or whose bars changed since).
        prepared, whole = model.predictor.prepared_counts() if model else (0, 0)
        return {
            "updated_ms": str(now_ms()),
            "consumer": self.consumer,
            "model_name": model.predictor.name if model else (self.fallback.har or self.fallback.ewma).name,
            "model_version": model.version or "" if model else "",
            "baseline": "0" if model else "1",
            "fallback_fits": str(self.fallback.fits),
            "mqtt_connected": "1" if self.publisher.connected else "0",
            "unpublished": str(self.publisher.unpublished),
            "record_errors": str(self.record_errors),
            "dead_letters": str(self.dead.buried),
            "invalid_events": str(self.invalid_events),
            "duplicate_events": str(self.duplicate_events),
            **self.late.status(),
            "handling_errors": str(self.handling_errors),
            "prepared_forecasts": str(prepared),
            "window_forecasts": str(whole),
            "market_feeds": str(self.market_feeds),
            "market_left_out": str(self.market_left_out),
            **self.guards.status(),
            **(self.calibration.status() if self.calibration is not None else {}),
            **(self.recorder.demoter.watch.status() if self.recorder.demoter is not None else {}),
            **{f"last_{k}": f"{v:.2f}" for k, v in self.timings.items()},
        }

    # -- the model --------------------------------------------------------------------------

    async def poll_model(self, *, force: bool = False) -> None:
        """Swap in the version named in Redis; a bad one is refused, counted, and the current kept."""
        if not force and time.monotonic() - self._last_poll < MODEL_POLL_S:
            return
        self._last_poll = time.monotonic()
        try:
            version = await current_version(self.redis, self.keys)
        except ResponseError as exc:  # not an outage: say so once, and serve on what is loaded
            if not self._model_error_logged:
                log.error("%s; serving %s meanwhile", key_problem(self.keys.model(), exc, expected="hash"),
                          self.model.version if self.model else "the baseline")
                self._model_error_logged = True
            return
        self._model_error_logged = False
        serving = self.model.version if self.model else None
        if version is None and serving is not None:
            await self._unless_demoted_to_baseline(serving)
            return
        if version is None or version == serving or version == self._failed_version:
            return
        try:
            path = self.store.path(version)
            predictor: Predictor = await asyncio.get_running_loop().run_in_executor(
                self._executor, load_predictor, path, self.settings.model)
        except Exception as exc:  # ArtifactError, StoreError, OSError: any of them means "do not serve it"
            self._failed_version = version
            message = f"model version {version} refused, keeping {serving or 'the baseline'}: {exc}"
            log.error("%s", message)
            pipe = self.redis.pipeline(transaction=False)
            pipe.hincrby(self.keys.forecaster(), "model_errors", 1)
            pipe.hset(self.keys.forecaster(), mapping=_enc({"last_model_error": message,
                                                            "last_model_error_ms": str(now_ms())}))
            await pipe.execute()
            return
        self._failed_version = None
        self.model = Serving(predictor, version)
        self._settle_due = True
        self.bars.set_look_back(max(predictor.look_back, self.fallback.look_back))
        log.info("serving model %s version %s", predictor.name, version)
        if self._newest_ms is not None:  # the new model's head start on the next boundary
            self._prepares.put_nowait((self._newest_ms, {}))

    async def _unless_demoted_to_baseline(self, serving: str) -> None:
        """The model hash names no version: a demotion to the baseline (forecaster/demotion.py)
        when it says it demoted the serving version; otherwise (a Redis that lost the hash) the
        loaded model goes on serving."""
        demoted: Any = await self.redis.hget(self.keys.model(), "demoted_version")
        if demoted is None or demoted.decode(errors="replace") != serving:
            return
        log.warning("model version %s was demoted to the baseline; the fallback baselines serve", serving)
        self.model = None
        self._prepared = None
        self._settle_due = True

    # -- one batch ----------------------------------------------------------------------------

    async def process(self, events: Sequence[Event]) -> None:
        if not events:
            return
        try:
            await self._process(events)
        finally:
            done, self._boundary_done = self._boundary_done, asyncio.Event()
            done.set()

    async def _process(self, events: Sequence[Event]) -> None:
        by_time: dict[int, list[Event]] = {}
        invalid: list[tuple[Event, str, int]] = []
        repeated: list[tuple[int, bytes]] = []
        superseded: list[tuple[int, bytes]] = []
        predicted = self._predicted
        late = self.late
        for event in events:
            feed = event.feed
            if feed is None:
                invalid.append((event, event.problem or "not a bar-closed event", 1))
                continue
            kind = late.triage(event, feed, predicted.get(feed))
            if kind is Triage.REPEAT:
                repeated.append((event.shard, event.entry_id))  # the same bar's event again: one forecast per bar
            elif kind is Triage.SUPERSEDED:
                superseded.append((event.shard, event.entry_id))
                log.info("%s: event of bar %d (rev %d) came after bar %d was predicted from: superseded, not "
                         "predicted", feed, event.open_time_ms, event.rev, predicted.get(feed))
            else:
                if kind is Triage.REVISION:
                    self.bars.forget(feed)  # the held bars are the old revision's: read them afresh
                    self._revising[feed] = (event.open_time_ms, event.rev)
                by_time.setdefault(event.open_time_ms, []).append(event)
        if repeated:
            self.duplicate_events += len(repeated)
            self._acks.put_nowait(({}, repeated, None))
        if superseded:
            late.superseded += len(superseded)
            self._acks.put_nowait(({}, superseded, None))
        if invalid:
            self.invalid_events += len(invalid)
            try:
                await self.dead.bury(invalid)
            except TRANSIENT:
                # They and the rest are in this consumer's pending list, which is not read again:
                # keep them for after the retry instead of leaving them there.
                later = [e for t in sorted(by_time) for e in by_time[t]]
                self._stash[:0] = [e for e, _, _ in invalid] + later
                raise
        times = sorted(by_time)
        try:
            for n, open_ms in enumerate(times):
                try:
                    await self._handle(open_ms, by_time[open_ms])
                except TRANSIENT:
                    # Raised by the boundary's first read, before anything was published: as above.
                    self._stash[:0] = [e for t in times[n:] for e in by_time[t]]
                    raise
        finally:
            self._revising.clear()

    async def _handle(self, open_ms: int, events: list[Event]) -> None:
        """One boundary's events; the suspects (feeds that failed recently) each on their own."""
        suspects = self._suspects
        if not suspects:
            await self._attempt(open_ms, events)
            return
        rest = [e for e in events if e.feed not in suspects]
        if rest:
            await self._attempt(open_ms, rest)
        for event in events:
            if event.feed in suspects:
                await self._attempt(open_ms, [event])

    async def _attempt(self, open_ms: int, events: list[Event], failures: int = 0) -> None:
        """``boundary``, and when it fails for any reason but an outage: the events again in two
        halves, down to the single event that fails, which is tried ``dead_letter_after`` times
        and then dead-lettered. One bad event never holds back the good ones read with it, and
        a failure that is not an outage is never retried as if Redis were down."""
        try:
            await self.boundary(open_ms, events)
        except TRANSIENT:
            raise
        except Exception as exc:
            self.handling_errors += 1
            for event in events:  # a failed read may have left their held bars half written
                if event.feed is not None:
                    self.bars.forget(event.feed)
            if len(events) > 1:
                log.error("bar %d: handling %d events failed (%s); retrying them apart", open_ms, len(events),
                          self._reason(exc, None))
                half = len(events) // 2
                await self._attempt(open_ms, events[:half])
                await self._attempt(open_ms, events[half:])
                return
            event = events[0]
            if event.feed is not None:
                self._suspects.add(event.feed)
            failures += 1
            if failures < self._dead_after:
                await self._attempt(open_ms, events, failures)
            else:
                await self.dead.bury([(event, self._reason(exc, event.feed), failures)])
            return
        if len(events) == 1 and events[0].feed in self._suspects:
            self._suspects.discard(events[0].feed)

    def _reason(self, exc: BaseException, feed: Feed | None) -> str:
        if feed is not None and wrong_type(exc):
            return str(key_problem(self.keys.bars(feed), exc, expected="stream of bars"))
        return f"{type(exc).__name__}: {exc}"

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
        self._idle.clear()
        try:
            await self._boundary(open_ms, events)
        finally:
            self._idle.set()

    async def _boundary(self, open_ms: int, events: Sequence[Event]) -> None:
        started = time.perf_counter()
        events = list(events)
        feeds = list(dict.fromkeys(e.feed for e in events if e.feed is not None))
        full_reads = self.bars.full_reads
        histories = await self.bars.at(feeds, open_ms)
        if self.bars.full_reads != full_reads:
            self._settle_due = True  # lasting state was built: freeze it, see heap.py
        if self.calibration is not None:  # a round trip only for feeds new to this process
            await self.calibration.ensure(histories.ready)
        read = time.perf_counter()
        ready = histories.ready
        if len(ready) < len(feeds):
            log.warning("%d of %d bars at %d are not in Redis; their events are acknowledged",
                        len(feeds) - len(ready), len(feeds), open_ms)
        if self.fallback.fits == 0 and self._fallback_serves(ready, histories):
            await self._refit_fallback(ready, histories)  # the very first fit serves at once
        jobs = [(*job, histories) for job in self._jobs(ready, histories)]
        # Prepared (one LSTM step per feed) or small, the forward passes run on this thread one
        # chunk at a time; otherwise they are all queued on the predictor thread at once.
        inline = self._was_prepared(open_ms) or (len(jobs) == 1 and len(jobs[0][1]) <= INLINE_MAX)
        running = [] if inline else [self._start(sv, g, b, inline=False) for sv, g, b, _ in jobs]
        seen = set(feeds)
        record = _Record(open_ms, [], [], [], [], {}, asyncio.Event(), {})
        ticket = record.ticket
        submit_s = 0.0
        i = 0
        while i < len(jobs):
            serving, group, batch, held = jobs[i]
            if inline:
                running.append(self._start(serving, group, batch, inline=True))
            results = await self._results(running[i], serving, group, batch)
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
                    jobs += [(*job, more) for job in self._jobs(more.ready, more)]
                    running += [self._start(sv, g, b, inline=False) for sv, g, b, _ in jobs[len(running):]]
        done = time.perf_counter()
        record.timings.update(read_ms=(read - started) * 1000, predict_ms=(done - read - submit_s) * 1000,
                              submit_ms=submit_s * 1000)
        self.timings.update(record.timings)
        self._records.put_nowait(record)
        self._acks.put_nowait((ticket, [(e.shard, e.entry_id) for e in events], record.done))
        if self._newest_ms is None or open_ms >= self._newest_ms:
            self._newest_ms = open_ms
            self._prepares.put_nowait((open_ms, ticket))
        self.batches += 1
        self.duplicate_events += len(events) - len(seen)  # a feed's event twice in one read
        self.predictions += len(record.predictions)
        predicted = self._predicted
        for prediction in record.predictions:
            predicted[prediction.feed] = open_ms
        # After the hand-over, off the boundary's latency:
        if self.fallback.refit_due and self._fallback_serves(ready, histories):
            await self._refit_fallback(ready, histories)
        self.bars.make_room(open_ms + self.interval_ms)

    async def _more_of(self, open_ms: int, seen: set[Feed], events: list[Event]) -> Histories | None:
        """Events of bar ``open_ms`` that arrived meanwhile (added to ``events``), and their bars.

        Events of other bars wait in ``_stash`` for the consume loop. A Redis error only ends the
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
            (same if event.feed is not None and event.open_time_ms == open_ms else self._stash).append(event)
        if not same:
            return None
        fresh = [f for f in dict.fromkeys(e.feed for e in same if e.feed is not None) if f not in seen]
        try:
            more = await self.bars.at(fresh, open_ms)
        except (RedisError, OSError) as exc:
            log.debug("look-ahead bars of bar %d not read: %s", open_ms, exc)
            self._stash += same
            return None
        events += same  # acknowledged with this boundary (a repeated event of a feed: not predicted twice)
        seen.update(fresh)
        if len(more.ready) < len(fresh):
            log.warning("%d of %d bars at %d are not in Redis; their events are acknowledged",
                        len(fresh) - len(more.ready), len(fresh), open_ms)
        return more

    def _hand_over(self, open_ms: int, feeds: Sequence[Feed], results: Sequence[tuple[Forecast, Serving]],
                   histories: Histories, record: _Record) -> Ticket:
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
        """The guarded forecasts (rare) replaced by the fallback baseline on the same bars, or
        naive; each with what the payload says about it, keyed by its index in ``feeds``."""
        out = list(results)
        failed = [i for i, (forecast, _) in enumerate(results) if forecast.guard is not None]
        retry = [i for i in failed if not results[i][1].baseline]
        redone = dict(zip(retry, baseline_forecasts([feeds[i] for i in retry], histories, self.fallback.choose,
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

    def _feed_key(self, feed: Feed) -> str:
        key = self._feed_keys.get(feed)
        if key is None:
            key = self._feed_keys[feed] = feed_key(feed)
        return key

    def _fallback_serves(self, feeds: Sequence[Feed], histories: Histories) -> bool:
        model = self.model
        if not feeds:
            return False
        if model is None or (self.guards.total and self.fallback.fits == 0):
            return True  # a guarded forecast is replaced by the fallback: it must be fitted
        history_length = model.predictor.history_length
        return any(history_length(n) is None for n in {histories.length(f) for f in feeds})

    def _jobs(self, feeds: Sequence[Feed], histories: Histories) -> list[tuple[Serving, list[Feed], Batch]]:
        """The forward passes of a boundary: the model for the feeds it can serve (all of them,
        usually), the fallback baselines for the rest (or all, before a model), grouped by
        predictor and history length, in chunks of at most PREDICT_CHUNK feeds."""
        model = self.model
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

    def _start(self, serving: Serving, feeds: Sequence[Feed], batch: Batch, *, inline: bool
               ) -> asyncio.Future[list[Forecast]]:
        """Queue a forward pass on the predictor thread, or run it now (a small boundary: handing
        it to the thread and back costs two thread wake-ups, which took 2-10 ms each on a busy
        2-core machine, more than the 100-feed forward pass itself)."""
        loop = asyncio.get_running_loop()
        keys = [self._feed_key(f) for f in feeds]
        if not inline:
            return loop.run_in_executor(self._executor, serving.predictor.predict_batch, batch, keys)
        done: asyncio.Future[list[Forecast]] = loop.create_future()
        try:
            done.set_result(serving.predictor.predict_batch(batch, keys))
        except Exception as exc:  # _results serves the naive baseline instead
            done.set_exception(exc)
        return done

    async def _results(self, running: asyncio.Future[list[Forecast]], serving: Serving, feeds: Sequence[Feed],
                       batch: Batch) -> list[tuple[Forecast, Serving]]:
        try:
            return [(fc, serving) for fc in await running]
        except Exception as exc:  # a model that cannot serve these histories must not stop the others
            log.error("%s (version %s) failed on %d histories, serving the naive baseline: %s",
                      serving.predictor.name, serving.version or "baseline", len(feeds), exc)
            naive = Serving(self.naive, None)
            forecasts = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.naive.predict_batch, batch, [self._feed_key(f) for f in feeds])
            return [(fc, naive) for fc in forecasts]

    async def _refit_fallback(self, feeds: Sequence[Feed], histories: Histories) -> None:
        """Refit the fallback baselines on the histories at hand, beside the loop, between boundaries."""
        # The refit uses the longest max_fit_feeds histories: copy only those out of the matrix.
        longest = sorted(feeds, key=histories.length, reverse=True)[: self.fallback.max_fit_feeds]
        frames = [(self._feed_key(f), histories.frame(f, self.bars.look_back)) for f in longest]
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self.fallback.refit, frames)
        except Exception as exc:  # a failed refit keeps the previous fit, which still serves
            log.error("fallback baseline refit failed: %s", exc)
            return
        log.info("fallback baselines refitted on %d feeds (HAR %s)", len(frames),
                 "fitted" if self.fallback.har is not None else "not yet: histories too short")

    # -- the next boundary's head start, after the hand-over ------------------------------------

    async def prepare(self) -> None:
        """Let the serving model compute ahead for the feeds' next bars (``Predictor.prepare``).

        Like the bookkeeping, it waits for the broker to confirm the boundary and for the whole
        boundary to be predicted (``_until_out``).
        A boundary with a newer one queued behind it is skipped: only the newest bars can be the
        next windows' older bars.
        """
        while True:
            open_ms, ticket = await self._prepares.get()
            if not self._prepares.empty():
                continue
            await self._until_out(open_ms, ticket)
            serving = self.model
            if serving is None or not self._prepares.empty():
                continue
            copied = self._prepare_batch(serving.predictor, open_ms)
            if copied is None:
                continue
            feeds, batch = copied
            started = time.perf_counter()
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self._executor, serving.predictor.prepare, batch, [self._feed_key(f) for f in feeds])
            except Exception as exc:  # the next boundary then reads whole windows: slower, not wrong
                log.error("preparing bar %d for %s failed: %s", open_ms + self.interval_ms, serving.predictor.name, exc)
                continue
            self.timings["prepare_ms"] = (time.perf_counter() - started) * 1000
            self._prepared = (serving, open_ms)

    def _was_prepared(self, open_ms: int) -> bool:
        """Whether the serving model prepared the boundary before ``open_ms`` (its feeds then
        take one LSTM step each)."""
        prepared = self._prepared
        return (prepared is not None and prepared[0] is self.model
                and prepared[1] == open_ms - self.interval_ms)

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

    # -- the Redis bookkeeping, after the hand-over ---------------------------------------------

    async def record(self) -> None:
        """Write each published boundary's predictions, realised errors and scores, in order.

        Redis unavailable: retried with backoff (the boundary's events stay unacknowledged).
        A write Redis refuses (say, a key of the wrong type) is logged and counted, and the
        events are acknowledged anyway: retrying would hold every later boundary back.
        """
        backoff = Backoff(0.1, 5.0)
        while True:
            job = await self._records.get()
            await self._until_out(job.open_ms, job.ticket)
            started = time.perf_counter()
            writes: list[list[str]] | None = None
            while True:
                raise_if_cancelled()
                try:
                    if writes is None:
                        writes = await self.recorder.writes(job.predictions, job.payloads, job.latest,
                                                            job.last_volumes, self._until_idle)
                        writes += self._status_writes(job)
                    await self.recorder.apply(writes)
                    backoff.reset()
                    break
                except ResponseError as exc:
                    self.record_errors += 1
                    log.error("predictions of bar %d not recorded: %s", job.open_ms, exc)
                    break
                except (RedisError, OSError) as exc:
                    await self._retry(backoff, exc)
            job.done.set()
            for observe in self.recorded:
                observe(job.predictions, job.timings)
            self.timings["record_ms"] = (time.perf_counter() - started) * 1000
            if self._settle_due and self._records.empty():
                await self._until_idle()
                self._settle_due = False
                heap.settle()
            log.debug("bar %d: %d predictions; %s, record_ms %.1f", job.open_ms, len(job.predictions),
                      ", ".join(f"{k} {v:.1f}" for k, v in job.timings.items()), self.timings["record_ms"])

    async def _until_idle(self) -> None:
        """Let a boundary being predicted go first (the next batch of a burst of closes often
        arrives while the previous one is recorded), but not for longer than RECORD_DEFER_S."""
        await asyncio.sleep(0)
        if not self._idle.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RECORD_DEFER_S):
                    await self._idle.wait()

    async def _until_out(self, open_ms: int, ticket: Ticket) -> None:
        """Until the broker confirmed boundary ``open_ms`` (at most RECORD_AFTER_PUBLISH_S: it
        forwards the predictions to subscribers meanwhile, and work after a boundary should not
        take the CPU from it, unless it cannot be reached) and the whole boundary is predicted."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(RECORD_AFTER_PUBLISH_S):
                await self.publisher.published(ticket)
        await self._until_complete(open_ms)

    async def _until_complete(self, open_ms: int) -> None:
        """``_until_idle``, and until the rest of boundary ``open_ms`` is predicted too: the
        streamer writes 500 bars per transaction, so 1000 feeds' events come as two batches, and
        the first one's bookkeeping started in the gap between them delayed the second one's
        predictions by 10-20 ms. Complete means: no feed this worker held at the bar before is
        still waiting for bar ``open_ms`` (a feed another worker of the group serves now also
        waits, so never longer than RECORD_DEFER_S)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(RECORD_DEFER_S):
                while True:
                    await self._until_idle()
                    if self._newest_ms != open_ms or not self.bars.matrix.ending_at(open_ms - self.interval_ms):
                        return
                    await self._boundary_done.wait()

    def _status_writes(self, job: _Record) -> list[list[str]]:
        key = self.keys.forecaster()
        status = self.status()
        status["last_bar_ms"] = str(job.open_ms) if job.predictions else ""
        status["last_batch_size"] = str(len(job.predictions))
        flat = ["h", key]
        for name, value in status.items():
            flat += [name, value]
        return [flat, ["i", key, "predictions", str(len(job.predictions))], ["i", key, "batches", "1"]]


async def run(settings: Settings, *, consumer: str | None = None) -> None:
    """The forecaster service; ends only by cancellation (SIGINT/SIGTERM in the CLI)."""
    publisher = Publisher(settings.mqtt, client_id=None)
    async with redis_client(settings.redis) as redis:
        worker = Worker(settings, redis, publisher, consumer)
        log.info("forecaster %s reading %s as group %s", worker.consumer, ", ".join(worker.streams), worker.group)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(publisher.run(), name="publisher")
                tasks.create_task(worker.consume(), name="consume")
                tasks.create_task(worker.record(), name="record")
                tasks.create_task(worker.prepare(), name="prepare")
                tasks.create_task(worker.acknowledge(), name="acknowledge")
                tasks.create_task(worker.heartbeat(), name="heartbeat")
                tasks.create_task(serve_metrics(worker), name="metrics")
        except BaseExceptionGroup as group:
            # A key Redis refuses ends the service with its one message (the CLI prints it), not
            # with the traceback of a task group.
            problem = first_of(group, RedisDataProblem)
            if problem is None:
                raise
            raise problem from None
