"""``volcast forecast``: bar-closed events in, one batched forecast per boundary, predictions out.

The worker reads the bar-closed events of its interval with a Redis consumer group, so several
workers share the feeds and a dead worker's events are claimed by another (XAUTOCLAIM after
``forecaster.claim_idle``). Events of one boundary become one forward pass, run in a single
thread beside the event loop. Predictions go to MQTT (retained, per feed) and to Redis; an event
is acknowledged only once its prediction is confirmed by the broker, so no bar is skipped.

The serving model is the version named in ``keys.model()``; it is polled between batches and
swapped in between two boundaries, never during one. Until a model exists, and for feeds too
short for it, ``FallbackBaseline`` serves (HAR refitted on the live histories, EWMA for short
ones), marked ``baseline`` in the payload with the baseline's name.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from forecaster.bar_reader import BarHistories, History
from forecaster.fallback import FallbackBaseline
from forecaster.feeds import feed_key
from forecaster.live_scores import LiveScores, Realised
from forecaster.model_store import ModelStore, current_version
from forecaster.payload import Prediction
from forecaster.predictor import Forecast, Predictor, baseline_predictor, load_predictor
from forecaster.publisher import Publisher, Ticket
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


def parse_event(entry_id: bytes, fields: Mapping[bytes, bytes], interval_ms: int) -> Event:
    try:
        feed = Feed(fields[b"exchange"].decode(), fields[b"symbol"].decode(), interval_ms)
        return Event(entry_id, feed, int(fields[b"open_time_ms"]))
    except (KeyError, ValueError, UnicodeDecodeError):
        return Event(entry_id, None, 0)


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
        self.bars = BarHistories(redis, self.keys, self.fallback.look_back)
        self.scores = LiveScores(settings.forecaster.score_window)
        self._predicted: dict[Feed, Prediction] = {}
        self._acks: asyncio.Queue[tuple[Ticket, list[bytes]]] = asyncio.Queue()
        # torch's thread count is per OS thread (OpenMP): set it inside the thread that predicts,
        # or that thread uses every core and fights Redis, Mosquitto and the event loop for them.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forecast",
                                            initializer=_torch_threads, initargs=(settings.forecaster.threads,))
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
        self.timings: dict[str, float] = {}

    # -- the loop ---------------------------------------------------------------------------

    async def consume(self) -> None:
        """Read, forecast, publish; Redis failures are retried with backoff, never fatal."""
        backoff = Backoff(0.1, 5.0)
        pending_own = True  # after a restart under a fixed consumer name, our own PEL comes first
        while True:
            raise_if_cancelled()
            try:
                await self.ensure_group()
                await self.poll_model()
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
                await self.process([parse_event(i, f, self.interval_ms) for i, f in entries if f])
                backoff.reset()
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    continue  # Redis lost the group (restart without persistence): create it again
                await self._retry(backoff, exc)
            except (RedisError, OSError) as exc:
                await self._retry(backoff, exc)

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
        events = [parse_event(i, f, self.interval_ms) for i, f in entries if f]
        if events:
            log.info("claimed %d pending events of other consumers", len(events))
            await self.process(events)

    async def acknowledge(self) -> None:
        """XACK each batch once its predictions are out, in order."""
        backoff = Backoff(0.1, 5.0)
        while True:
            ticket, ids = await self._acks.get()
            await self.publisher.published(ticket)
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
        return {
            "updated_ms": str(now_ms()),
            "consumer": self.consumer,
            "model_name": model.predictor.name if model else (self.fallback.har or self.fallback.ewma).name,
            "model_version": model.version or "" if model else "",
            "baseline": "0" if model else "1",
            "fallback_fits": str(self.fallback.fits),
            "mqtt_connected": "1" if self.publisher.connected else "0",
            "unpublished": str(self.publisher.unpublished),
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
        self.bars.set_look_back(max(predictor.look_back, self.fallback.look_back))
        log.info("serving model %s version %s", predictor.name, version)

    # -- one batch ----------------------------------------------------------------------------

    async def process(self, events: Sequence[Event]) -> None:
        if not events:
            return
        invalid = [e.entry_id for e in events if e.feed is None]
        if invalid:
            log.warning("acknowledging %d malformed bar events", len(invalid))
            self._acks.put_nowait(({}, invalid))
        by_time: dict[int, list[Event]] = {}
        for event in events:
            if event.feed is not None:
                by_time.setdefault(event.open_time_ms, []).append(event)
        for open_ms in sorted(by_time):
            await self.boundary(open_ms, by_time[open_ms])

    async def boundary(self, open_ms: int, events: Sequence[Event]) -> None:
        """Every feed whose bar ``open_ms`` closed: one read, one forward pass, one publish."""
        started = time.perf_counter()
        feeds = list(dict.fromkeys(e.feed for e in events if e.feed is not None))
        histories = await self.bars.at([(feed, open_ms) for feed in feeds])
        read = time.perf_counter()
        ready = [feed for feed in feeds if feed in histories]
        if len(ready) < len(feeds):
            log.warning("%d of %d bars at %d are not in Redis; their events are acknowledged",
                        len(feeds) - len(ready), len(feeds), open_ms)
        if self.fallback.fits == 0 and self._fallback_serves(ready, histories):
            await self._refit_fallback(ready, histories)  # the very first fit serves at once
        forecasts = await self._predict(ready, histories)
        predicted = time.perf_counter()
        created = now_ms()
        predictions = [
            Prediction(
                feed=feed,
                open_time_ms=open_ms + feed.interval_ms,
                last_bar_ms=open_ms,
                last_volume=histories[feed].last_volume,
                volume=forecast.volume,
                quantiles=forecast.quantiles,
                model_name=serving.predictor.name,
                model_version=serving.predictor.version if serving.version else "baseline",
                baseline=serving.baseline,
                created_ms=created,
            )
            for feed, (forecast, serving) in zip(ready, forecasts, strict=True)
        ]
        prefix = self.settings.mqtt.topic_prefix
        payloads = [p.to_json() for p in predictions]  # once: MQTT and both Redis records use it
        ticket = self.publisher.submit([(forecast_topic(prefix, p.feed), payload)
                                        for p, payload in zip(predictions, payloads, strict=True)
                                        if histories[p.feed].latest])
        submitted = time.perf_counter()
        await self._record(predictions, payloads, histories)
        self.timings = {"read_ms": (read - started) * 1000, "predict_ms": (predicted - read) * 1000,
                        "submit_ms": (submitted - predicted) * 1000,
                        "record_ms": (time.perf_counter() - submitted) * 1000}
        log.debug("bar %d: %d predictions; %s", open_ms, len(predictions),
                  ", ".join(f"{k} {v:.1f}" for k, v in self.timings.items()))
        self.batches += 1
        self.predictions += len(predictions)
        self._acks.put_nowait((ticket, [e.entry_id for e in events]))
        if self.fallback.refit_due and self._fallback_serves(ready, histories):
            await self._refit_fallback(ready, histories)  # after the boundary: off its latency

    def _fallback_serves(self, feeds: Sequence[Feed], histories: Mapping[Feed, History]) -> bool:
        model = self.model
        return bool(feeds) and (model is None or any(
            len(histories[f].frame) < model.predictor.look_back for f in feeds))

    async def _predict(self, feeds: Sequence[Feed], histories: Mapping[Feed, History]
                       ) -> list[tuple[Forecast, Serving]]:
        """One forward pass of the model; feeds it cannot serve (or all, before a model) go to the
        fallback baselines, one batched call per baseline and history length."""
        if not feeds:
            return []
        model = self.model
        loop = asyncio.get_running_loop()
        out: dict[Feed, tuple[Forecast, Serving]] = {}
        groups: dict[tuple[int, int], tuple[Serving, list[Feed]]] = {}
        for feed in feeds:
            length = len(histories[feed].frame)
            if model is not None and length >= model.predictor.look_back:
                serving = model
            else:
                predictor = self.fallback.choose(length)
                serving = Serving(predictor, None)
                # Baselines stack equal-length tails: group by the length they will use.
                length = min(length, predictor.look_back)
            groups.setdefault((id(serving.predictor), length), (serving, []))[1].append(feed)
        for serving, group in groups.values():
            for feed, result in zip(group, await self._run_group(serving, group, histories, loop), strict=True):
                out[feed] = result
        if any(serving.baseline for serving, _ in groups.values()):
            self.fallback.served()
        return [out[feed] for feed in feeds]

    async def _refit_fallback(self, feeds: Sequence[Feed], histories: Mapping[Feed, History]) -> None:
        """Refit the fallback baselines on the histories at hand, beside the loop, between boundaries."""
        frames = [(feed_key(f), histories[f].frame) for f in feeds]
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self.fallback.refit, frames)
        except Exception as exc:  # a failed refit keeps the previous fit, which still serves
            log.error("fallback baseline refit failed: %s", exc)
            return
        log.info("fallback baselines refitted on %d feeds (HAR %s)", len(frames),
                 "fitted" if self.fallback.har is not None else "not yet: histories too short")

    async def _run_group(self, serving: Serving, feeds: Sequence[Feed], histories: Mapping[Feed, History],
                         loop: asyncio.AbstractEventLoop) -> list[tuple[Forecast, Serving]]:
        batch = [(feed_key(f), histories[f].frame) for f in feeds]
        try:
            forecasts = await loop.run_in_executor(self._executor, serving.predictor.predict, batch)
            return [(fc, serving) for fc in forecasts]
        except Exception as exc:  # a model that cannot serve these histories must not stop the others
            log.error("%s (version %s) failed on %d histories, serving the naive baseline: %s",
                      serving.predictor.name, serving.version or "baseline", len(feeds), exc)
            naive = Serving(self.naive, None)
            forecasts = await loop.run_in_executor(self._executor, self.naive.predict, batch)
            return [(fc, naive) for fc in forecasts]

    async def _record(self, predictions: Sequence[Prediction], payloads: Sequence[bytes],
                      histories: Mapping[Feed, History]) -> None:
        """Predictions, realised errors and live scores into Redis, in two pipelined round trips."""
        keys = self.keys
        kept = self.settings.forecaster.predictions_kept
        # What the realised errors need and this process may not hold: the prediction of the bar
        # that just closed, and the feed's score window (another worker had the previous bar).
        lookups: list[tuple[str, Feed]] = []
        reads = self.redis.pipeline(transaction=False)
        for p in predictions:
            closed = p.last_bar_ms
            mine = self._predicted.get(p.feed)
            if mine is None or mine.open_time_ms != closed:
                reads.xrange(keys.predictions(p.feed), min=f"{closed}-0", max=f"{closed}-0")
                lookups.append(("prediction", p.feed))
            if not self.scores.follows(p.feed, closed):
                reads.xrevrange(keys.realised(p.feed), max=f"{closed - 1}", count=self.scores.window - 1)
                lookups.append(("scores", p.feed))
        earlier: dict[Feed, tuple[float, float, str]] = {}
        for p in predictions:
            mine = self._predicted.get(p.feed)
            if mine is not None and mine.open_time_ms == p.last_bar_ms:
                earlier[p.feed] = (mine.volume, mine.last_volume, mine.model_version)
        if lookups:
            replies: list[Any] = await reads.execute()
            for (kind, feed), reply in zip(lookups, replies, strict=True):
                if kind == "prediction" and reply:
                    fields = reply[0][1]
                    try:
                        earlier[feed] = (float(fields[b"volume"]), float(fields[b"last_volume"]),
                                         fields.get(b"model_version", b"").decode())
                    except (KeyError, ValueError):
                        log.warning("unreadable prediction entry for %s at %s", feed, reply[0][0])
                elif kind == "scores":
                    records = []
                    for _, fields in reversed(reply):
                        try:
                            records.append(Realised.from_fields(fields))
                        except ValueError:
                            continue
                    self.scores.load(feed, records)
        writes = self.redis.pipeline(transaction=False)
        for p, payload in zip(predictions, payloads, strict=True):
            fields = p.to_fields(payload)
            writes.xadd(keys.predictions(p.feed), _enc(fields), id=f"{p.open_time_ms}-0", maxlen=kept, approximate=True)
            if histories[p.feed].latest:
                writes.hset(keys.prediction(p.feed), mapping=_enc(fields))
                self._predicted[p.feed] = p
            before = earlier.get(p.feed)
            if before is not None:
                realised = Realised(p.last_bar_ms, before[0], histories[p.feed].last_volume, before[1], before[2])
                writes.xadd(keys.realised(p.feed), _enc(realised.to_fields()), id=f"{p.last_bar_ms}-0",
                            maxlen=kept, approximate=True)
                writes.hset(keys.scores(p.feed), mapping=_enc({**self.scores.add(p.feed, realised),
                                                               "updated_ms": str(now_ms())}))
        status = self.status()
        status["last_bar_ms"] = str(predictions[0].last_bar_ms) if predictions else ""
        status["last_batch_size"] = str(len(predictions))
        writes.hset(keys.forecaster(), mapping=_enc(status))
        writes.hincrby(keys.forecaster(), "predictions", len(predictions))
        writes.hincrby(keys.forecaster(), "batches", 1)
        for result in await writes.execute(raise_on_error=False):
            if isinstance(result, ResponseError) and "equal or smaller" in str(result):
                continue  # a replayed event: this prediction or realised error is already written
            if isinstance(result, Exception):
                raise result


async def run(settings: Settings, *, consumer: str | None = None) -> None:
    """The forecaster service; ends only by cancellation (SIGINT/SIGTERM in the CLI)."""
    publisher = Publisher(settings.mqtt, client_id=None)
    async with redis_client(settings.redis) as redis:
        worker = Worker(settings, redis, publisher, consumer)
        log.info("forecaster %s reading %s as group %s", worker.consumer, worker.stream, worker.group)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(publisher.run(), name="publisher")
            tasks.create_task(worker.consume(), name="consume")
            tasks.create_task(worker.acknowledge(), name="acknowledge")
            tasks.create_task(worker.heartbeat(), name="heartbeat")
