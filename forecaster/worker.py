"""``volcast forecast``: bar-closed events in, one batched forecast per boundary, predictions out.

The worker reads the bar-closed events of its interval with a Redis consumer group
(forecaster/event_consumer.py), so several workers share the feeds and a dead worker's events are
claimed by another. The events of a read are sorted into boundaries (forecaster/event_triage.py),
and each boundary becomes batched forward passes (forecaster/forward_passes.py), run in a single
thread beside the event loop (or on the loop's thread for a small boundary), whose predictions go
to MQTT chunk by chunk (forecaster/boundary_pass.py). The Redis bookkeeping
(forecaster/bookkeeping.py) and the next boundary's head start (forecaster/preparation.py) run in
tasks of their own after the hand-over, and an event is acknowledged only once its predictions are
confirmed by the broker and recorded, so no bar is skipped; forecaster/handoffs.py holds what these
tasks hand each other. The serving model is swapped in between two boundaries
(forecaster/serving.py). docs/forecaster.md has the figures.

This module wires those parts together for one process, writes its status and heartbeat, and runs
them as one task group (``run``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from forecaster.bar_reader import BarHistories
from forecaster.bookkeeping import Bookkeeping
from forecaster.boundary_pass import BoundaryPass
from forecaster.calibration_store import Calibration
from forecaster.dead_letters import DeadLetters
from forecaster.demotion import DemotionWatch
from forecaster.demotion_store import Demoter
from forecaster.event_consumer import EventConsumer
from forecaster.event_reads import ShardReader
from forecaster.event_triage import EventTriage
from forecaster.events import Event, EventParser
from forecaster.fallback import FallbackBaseline
from forecaster.forward_passes import ForwardPasses
from forecaster.guard import GuardCounts
from forecaster.handoffs import Handoffs
from forecaster.horizons import resolve as resolve_horizons
from forecaster.late_events import LateEvents
from forecaster.metrics import serve_metrics
from forecaster.model_store import ModelStore
from forecaster.payload import Prediction
from forecaster.predictor import baseline_predictor
from forecaster.preparation import Preparation
from forecaster.publisher import Publisher
from forecaster.recorder import Recorder
from forecaster.serving import ModelSwap, Serving
from forecaster.wall_clock import now_ms
from forecaster.worker_counts import WorkerCounts
from volcast.aio import raise_if_cancelled
from volcast.cluster_start import started_redis
from volcast.keys import RedisKeys
from volcast.redis_problems import RedisDataProblem, first_of
from volcast.redis_text import field_mapping
from volcast.settings import Settings

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0


def _torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Worker:
    """The parts of one forecaster process; ``run`` runs their tasks."""

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
        self.events = EventParser(self.interval_ms, frozenset(settings.feeds()))
        self.dead = DeadLetters(redis, self.keys, self.interval_ms, self.group, self.consumer,
                                settings.redis.event_shards)
        self.reader = ShardReader(redis, self.streams, self.group, self.consumer, alive_key=self.keys.consumer_alive,
                                  claim_idle_ms=settings.forecaster.claim_idle)
        self.late = LateEvents()  # revised bars and late events (forecaster/late_events.py)
        self.counts = WorkerCounts()
        self.timings = self.counts.timings
        # torch's thread count is per OS thread (OpenMP): set it inside the thread that predicts,
        # or that thread uses every core and fights Redis, Mosquitto and the event loop for them.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forecast",
                                            initializer=_torch_threads, initargs=(settings.forecaster.threads,))
        _torch_threads(settings.forecaster.threads)  # and for small boundaries predicted inline
        self.handoffs = Handoffs(publisher, self.bars, self.interval_ms)
        self.swap = ModelSwap(redis, self.keys, self.store, settings.model, self._executor, self.bars,
                              self.fallback, self.handoffs)
        self.passes = ForwardPasses(self.swap, self.fallback, self.naive, self.guards, self.bars, self._executor,
                                    workers=lambda: self.reader.workers)
        self.boundaries = BoundaryPass(settings, publisher, self.bars, self.reader, self.streams, self.events,
                                       self.swap, self.passes, self.calibration, self.late, self.handoffs,
                                       self.counts)
        self.triage = EventTriage(self.keys, self.bars, self.boundaries, self.dead, self.late, self.handoffs,
                                  self.counts, settings.forecaster.dead_letter_after)
        self.event_consumer = EventConsumer(settings, redis, self.keys, self.consumer, self.streams, self.reader,
                                            self.events, self.dead, publisher, self.swap, self.handoffs,
                                            self.triage)
        self.preparation = Preparation(self.swap, self.bars, self.handoffs, self._executor, self.passes.feed_key,
                                       self.timings, self.interval_ms)
        self.bookkeeping = Bookkeeping(self.keys, self.recorder, self.handoffs, self.counts, self.status)
        # Called with each published boundary's predictions and timings once recorded (metrics).
        self.recorded: list[Callable[[Sequence[Prediction], Mapping[str, float]], None]] = self.bookkeeping.recorded

    @property
    def model(self) -> Serving | None:
        """The model in keys.model() being served; None until there is one."""
        return self.swap.model

    # -- the tasks (``run``) and the steps tests drive one at a time --------------------------------

    async def consume(self) -> None:
        await self.event_consumer.consume()

    async def acknowledge(self) -> None:
        await self.event_consumer.acknowledge()

    async def record(self) -> None:
        await self.bookkeeping.record()

    async def prepare(self) -> None:
        await self.preparation.prepare()

    async def ensure_group(self) -> None:
        await self.event_consumer.ensure_group()

    async def claim(self) -> None:
        await self.event_consumer.claim()

    async def poll_model(self, *, force: bool = False) -> None:
        await self.swap.poll(force=force)

    async def process(self, events: Sequence[Event]) -> None:
        await self.triage.process(events)

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
                    pipe.hset(self.keys.forecaster(), mapping=field_mapping(self.status()))
                    last_status = time.monotonic()
                await pipe.execute()
            except (RedisError, OSError) as exc:
                log.debug("heartbeat not written: %s", exc)
            await asyncio.sleep(every_s)

    def status(self) -> dict[str, str]:
        model = self.swap.model
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
            "record_errors": str(self.counts.record_errors),
            "dead_letters": str(self.dead.buried),
            "invalid_events": str(self.counts.invalid_events),
            "duplicate_events": str(self.counts.duplicate_events),
            **self.late.status(),
            "handling_errors": str(self.counts.handling_errors),
            "prepared_forecasts": str(prepared),
            "window_forecasts": str(whole),
            "market_feeds": str(self.passes.market_feeds),
            "market_left_out": str(self.passes.market_left_out),
            **self.guards.status(),
            **(self.calibration.status() if self.calibration is not None else {}),
            **(self.recorder.demoter.watch.status() if self.recorder.demoter is not None else {}),
            **{f"last_{k}": f"{v:.2f}" for k, v in self.timings.items()},
        }


async def run(settings: Settings, *, consumer: str | None = None) -> None:
    """The forecaster service; ends only by cancellation (SIGINT/SIGTERM in the CLI)."""
    publisher = Publisher(settings.mqtt, client_id=None)
    # A cluster whose start-up node is down (a master not yet replaced): retried, logged.
    async with started_redis(settings.redis) as redis:
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
