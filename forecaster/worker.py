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
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from forecaster import heap
from forecaster.bar_reader import BarHistories, Histories
from forecaster.fallback import FallbackBaseline
from forecaster.features import Batch
from forecaster.feeds import feed_key
from forecaster.model_store import ModelStore, current_version
from forecaster.payload import Prediction
from forecaster.predictor import Forecast, Predictor, baseline_predictor, load_predictor
from forecaster.publisher import Publisher, Ticket
from forecaster.recorder import Recorder
from volcast.aio import raise_if_cancelled
from volcast.backoff import Backoff
from volcast.connections import redis_client
from volcast.keys import Feed, RedisKeys, forecast_topic
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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class Event:
    """One bar-closed event; ``feed`` is None for an entry that is not a valid event."""

    entry_id: bytes
    feed: Feed | None
    open_time_ms: int


def parse_event(entry_id: bytes, fields: Mapping[bytes, bytes], interval_ms: int,
                feeds: dict[tuple[bytes, bytes], Feed] | None = None) -> Event:
    """``feeds``: the Feed of each (exchange, symbol) seen before, reused (see ``Worker._event``)."""
    try:
        exchange, symbol = fields[b"exchange"], fields[b"symbol"]
        feed = feeds.get((exchange, symbol)) if feeds is not None else None
        if feed is None:
            feed = Feed(exchange.decode(), symbol.decode(), interval_ms)
            if feeds is not None:
                feeds[(exchange, symbol)] = feed
        return Event(entry_id, feed, int(fields[b"open_time_ms"]))
    except (KeyError, ValueError, UnicodeDecodeError):
        return Event(entry_id, None, 0)


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
        self.stream = self.keys.bar_events(self.interval_ms)
        self.group = settings.forecaster.group
        self.store = ModelStore(settings.refit.model_dir)
        self.fallback = FallbackBaseline()
        self.model: Serving | None = None  # the model in keys.model(); None until there is one
        self.naive = baseline_predictor("naive")
        self.bars = BarHistories(redis, self.keys, self.interval_ms, self.fallback.look_back)
        self.recorder = Recorder(redis, self.keys, kept=settings.forecaster.predictions_kept,
                                 score_window=settings.forecaster.score_window)
        self._records: asyncio.Queue[_Record] = asyncio.Queue()
        # Boundaries published (bar open time, their MQTT ticket) whose next one can be prepared.
        self._prepares: asyncio.Queue[tuple[int, Ticket]] = asyncio.Queue()
        self._newest_ms: int | None = None  # the newest boundary predicted
        self._prepared: tuple[Serving, int] | None = None  # the model and boundary last prepared
        self._acks: asyncio.Queue[tuple[Ticket, list[bytes], asyncio.Event | None]] = asyncio.Queue()
        self._topics: dict[Feed, str] = {}
        self._stash: list[Event] = []  # events read ahead that belong to a later boundary
        self._idle = asyncio.Event()  # set while no boundary is being processed
        self._idle.set()
        self._boundary_done = asyncio.Event()  # replaced by a fresh one as each batch ends
        self._settle_due = True  # imports and the connections are lasting state too
        self._feed_keys: dict[Feed, str] = {}
        self._feed_objects: dict[tuple[bytes, bytes], Feed] = {}
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

    # -- the loop ---------------------------------------------------------------------------

    async def consume(self) -> None:
        """Read, forecast, publish; Redis failures are retried with backoff, never fatal."""
        backoff = Backoff(0.1, 5.0)
        pending_own = True  # after a restart under a fixed consumer name, our own PEL comes first
        group_ready = False  # created once, and again when Redis says it lost it (NOGROUP)
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
                start = "0" if pending_own else ">"
                reply: Any = await self.redis.xreadgroup(self.group, self.consumer, {self.stream: start},
                                                   count=READ_COUNT, block=None if pending_own else self._block_ms)
                # redis-py can return a blocking read's reply to a task being cancelled (seen in
                # tests: the worker then read on for ever). What it read stays in our pending list.
                raise_if_cancelled()
                entries = reply[0][1] if reply else []
                if pending_own and not entries:
                    pending_own = False
                elif entries and not pending_own:
                    entries += await self._drain(READ_COUNT - len(entries))
                await self.process([self._event(i, f) for i, f in entries if f])
                backoff.reset()
            except ResponseError as exc:
                group_ready = False
                if "NOGROUP" in str(exc):
                    continue  # Redis lost the group (restart without persistence): create it again
                await self._retry(backoff, exc)
            except (RedisError, OSError) as exc:
                group_ready = False  # a Redis that restarted may have lost it
                await self._retry(backoff, exc)

    async def _drain(self, room: int) -> list[Any]:
        """What else has arrived, without blocking: a blocked read returns as soon as the first
        event of a burst is written (Redis serves it after that one command), and the rest of
        the burst belongs in the same batch rather than in a second forward pass after it."""
        out: list[Any] = []
        while room > 0:
            reply: Any = await self.redis.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=room)
            raise_if_cancelled()
            entries = reply[0][1] if reply else []
            if not entries:
                break
            out += entries
            room -= len(entries)
        return out

    def _event(self, entry_id: bytes, fields: Mapping[bytes, bytes]) -> Event:
        # One Feed object per feed for the life of the process: the held bars and every
        # per-feed table are keyed by Feed, and a lookup with the very object that is the key
        # skips the dataclass __eq__ (7000 calls, about 2 ms per boundary at 1000 feeds).
        return parse_event(entry_id, fields, self.interval_ms, self._feed_objects)

    async def _retry(self, backoff: Backoff, exc: BaseException) -> None:
        delay = backoff.next_delay()
        log.warning("Redis unavailable (%s); retrying in %.1fs", exc, delay)
        await asyncio.sleep(delay)

    async def ensure_group(self) -> None:
        try:
            # From "0": a group created after the streamer started still sees every event.
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def claim(self) -> None:
        """Take over events another consumer has held longer than ``claim_idle`` (it died or is stuck).

        XPENDING with IDLE, then XCLAIM of other consumers' entries only: XAUTOCLAIM would also
        hand a worker back its own idle entries, resetting their idle time, so a worker that
        cannot publish would keep its events forever instead of letting a healthy one take them.
        """
        self._last_claim = time.monotonic()
        idle = self.settings.forecaster.claim_idle
        rows: Any = await self.redis.xpending_range(self.stream, self.group, min="-", max="+",
                                                    count=READ_COUNT, idle=idle)
        theirs = [row["message_id"] for row in rows if _text(row["consumer"]) != self.consumer]
        if not theirs:
            return
        entries: Any = await self.redis.xclaim(self.stream, self.group, self.consumer, idle, theirs)
        claimed = {entry_id for entry_id, _ in entries}
        gone = [i for i in theirs if i not in claimed]
        if gone:  # trimmed from the stream before anyone processed them
            await self.redis.xack(self.stream, self.group, *gone)
        events = [self._event(i, f) for i, f in entries if f]
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
                    await self.redis.xack(self.stream, self.group, *ids)
                    backoff.reset()
                    break
                except (RedisError, OSError) as exc:
                    await self._retry(backoff, exc)

    async def heartbeat(self) -> None:
        while True:
            raise_if_cancelled()
            try:
                await self.redis.hset(self.keys.forecaster(), mapping=_enc(self.status()))
            except (RedisError, OSError) as exc:
                log.debug("heartbeat not written: %s", exc)
            await asyncio.sleep(HEARTBEAT_S)

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
            "prepared_forecasts": str(prepared),
            "window_forecasts": str(whole),
            **{f"last_{k}": f"{v:.2f}" for k, v in self.timings.items()},
        }

    # -- the model --------------------------------------------------------------------------

    async def poll_model(self, *, force: bool = False) -> None:
        """Swap in the version named in Redis; a bad one is refused, counted, and the current kept."""
        if not force and time.monotonic() - self._last_poll < MODEL_POLL_S:
            return
        self._last_poll = time.monotonic()
        version = await current_version(self.redis, self.keys)
        serving = self.model.version if self.model else None
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

    # -- one batch ----------------------------------------------------------------------------

    async def process(self, events: Sequence[Event]) -> None:
        if not events:
            return
        self._idle.clear()
        try:
            await self._process(events)
        finally:
            self._idle.set()
            done, self._boundary_done = self._boundary_done, asyncio.Event()
            done.set()

    async def _process(self, events: Sequence[Event]) -> None:
        invalid = [e.entry_id for e in events if e.feed is None]
        if invalid:
            log.warning("acknowledging %d malformed bar events", len(invalid))
            self._acks.put_nowait(({}, invalid, None))
        by_time: dict[int, list[Event]] = {}
        for event in events:
            if event.feed is not None:
                by_time.setdefault(event.open_time_ms, []).append(event)
        times = sorted(by_time)
        for n, open_ms in enumerate(times):
            try:
                await self.boundary(open_ms, by_time[open_ms])
            except (RedisConnectionError, RedisTimeoutError, OSError):
                # Raised by the boundary's first read, before anything was published: these
                # events (and the later ones) are in this consumer's pending list, which is not
                # read again; keep them for after the retry instead of leaving them there.
                self._stash[:0] = [e for t in times[n:] for e in by_time[t]]
                raise

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
        started = time.perf_counter()
        events = list(events)
        feeds = list(dict.fromkeys(e.feed for e in events if e.feed is not None))
        full_reads = self.bars.full_reads
        histories = await self.bars.at(feeds, open_ms)
        if self.bars.full_reads != full_reads:
            self._settle_due = True  # lasting state was built: freeze it, see heap.py
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
        self._acks.put_nowait((ticket, [e.entry_id for e in events], record.done))
        if self._newest_ms is None or open_ms >= self._newest_ms:
            self._newest_ms = open_ms
            self._prepares.put_nowait((open_ms, ticket))
        self.batches += 1
        self.predictions += len(record.predictions)
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
            reply: Any = await self.redis.xreadgroup(self.group, self.consumer, {self.stream: ">"},
                                                     count=READ_COUNT)
        except (RedisError, OSError) as exc:
            log.debug("no look-ahead for bar %d: %s", open_ms, exc)
            return None
        raise_if_cancelled()
        same: list[Event] = []
        for event in (self._event(i, f) for i, f in (reply[0][1] if reply else []) if f):
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
        """Predictions of one chunk to MQTT; kept in ``record`` for the Redis bookkeeping."""
        created = now_ms()
        last_volumes = histories.last_volumes(feeds)
        latest = [histories.latest(feed) for feed in feeds]
        predictions = [
            Prediction(
                feed=feed,
                open_time_ms=open_ms + feed.interval_ms,
                last_bar_ms=open_ms,
                last_volume=last_volume,
                volume=forecast.volume,
                quantiles=forecast.quantiles,
                model_name=serving.predictor.name,
                model_version=serving.predictor.version if serving.version else "baseline",
                baseline=serving.baseline,
                created_ms=created,
            )
            for feed, last_volume, (forecast, serving) in zip(feeds, last_volumes, results, strict=True)
        ]
        payloads = [p.to_json() for p in predictions]  # once: MQTT and both Redis records use it
        ticket = self.publisher.submit([(self._topic(p.feed), payload)
                                        for p, payload, newest in zip(predictions, payloads, latest, strict=True)
                                        if newest])
        record.predictions.extend(predictions)
        record.payloads.extend(payloads)
        record.latest.extend(latest)
        record.last_volumes.extend(last_volumes)
        return ticket

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
        if model is None:
            return True
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
        return [(serving, group_feeds, batch)
                for (_, length), (serving, group) in groups.items()
                for group_feeds, batch in histories.batches(group, length, PREDICT_CHUNK)]

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
        log.info("forecaster %s reading %s as group %s", worker.consumer, worker.stream, worker.group)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(publisher.run(), name="publisher")
            tasks.create_task(worker.consume(), name="consume")
            tasks.create_task(worker.record(), name="record")
            tasks.create_task(worker.prepare(), name="prepare")
            tasks.create_task(worker.acknowledge(), name="acknowledge")
            tasks.create_task(worker.heartbeat(), name="heartbeat")
