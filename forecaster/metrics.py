"""The forecaster's Prometheus metrics.

Most are read at each scrape from what the worker counts anyway (the numbers of its status hash
``P:forecaster``: batches, dead letters, guarded forecasts by reason, errors, timings). What the
worker keeps no count of, forecasts by model and the latency of each, is counted once per
recorded boundary (``Worker.recorded``), after the hand-over to MQTT, off the latency path; the
status hash's ``predictions`` is incremented at the same step, so the two agree. Pending events
are the consumer group's, read with XPENDING every ``PENDING_EVERY_S`` (one command per event shard).

Labels stay few: forecasts by ``model`` (name), ``baseline`` and ``guarded``; never per feed (per-feed
scores are in Redis: ``P:{feed}:scores``). The served version is ``volcast_forecast_model_info``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from redis.exceptions import RedisError

from forecaster.payload import Prediction
from volcast.metric_histogram import Buckets, cumulative
from volcast.metrics_server import new_registry, serving_metrics

if TYPE_CHECKING:
    from forecaster.worker import Worker

log = logging.getLogger(__name__)

# Bar end to forecast (s): the streamer's close (ms after a busy bar's end, grace plus a ping for a
# quiet one) plus the worker's read, forward pass and hand-over.
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 3.0, 5.0, 10.0, 30.0, 60.0)
# One boundary's phases (s): read of the bars, forward passes, hand-over to MQTT.
PHASE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
PHASES = ("read", "predict", "submit")
PENDING_EVERY_S = 5.0
_PREFIX = "volcast_forecast_"


class ForecasterMetrics:
    """A ``prometheus_client`` collector over one worker, and the counts it adds per boundary."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self.forecasts: dict[tuple[str, str, str], int] = {}  # (model, baseline, guarded) -> count
        self.latency = Buckets(LATENCY_BUCKETS_S)
        self.phases = {phase: Buckets(PHASE_BUCKETS_S) for phase in PHASES}
        self.pending: int | None = None  # the group's pending events, as last read
        self.own_pending: int | None = None

    def recorded(self, predictions: Sequence[Prediction], timings: Mapping[str, float]) -> None:
        """One published boundary (called by the worker once its bookkeeping is done)."""
        forecasts = self.forecasts
        latency = self.latency
        made: dict[int, int] = {}  # (created_ms - bar end) -> forecasts: a chunk shares one moment
        for p in predictions:
            key = (p.model_name, "true" if p.baseline else "false", "false" if p.guard is None else "true")
            forecasts[key] = forecasts.get(key, 0) + 1
            delay = p.created_ms - p.last_bar_ms - p.feed.interval_ms
            made[delay] = made.get(delay, 0) + 1
        for delay, n in made.items():
            latency.add(max(0, delay) / 1000, n)
        if predictions:
            for phase in PHASES:
                seconds = timings.get(f"{phase}_ms")
                if seconds is not None:
                    self.phases[phase].add(seconds / 1000)

    async def poll_pending(self) -> None:
        """The consumer group's pending events (read, not yet acknowledged) over every event shard,
        every PENDING_EVERY_S."""
        worker = self._worker
        while True:
            try:
                pending = own = 0
                for stream in worker.streams:
                    summary: Any = await worker.redis.xpending(stream, worker.group)
                    pending += int(summary.get("pending") or 0)
                    for consumer in summary.get("consumers") or []:
                        name = consumer.get("name")
                        if (name.decode() if isinstance(name, bytes) else name) == worker.consumer:
                            own += int(consumer.get("pending") or 0)
                self.pending, self.own_pending = pending, own
            except (RedisError, OSError) as exc:  # the group may not exist yet; an outage passes
                log.debug("pending events not read: %s", exc)
            await asyncio.sleep(PENDING_EVERY_S)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        worker = self._worker
        forecasts = CounterMetricFamily(_PREFIX + "forecasts", "Forecasts published, by model, whether a baseline "
                                        "served and whether the output guard replaced the model's",
                                        labels=["model", "baseline", "guarded"])
        for key, value in dict(self.forecasts).items():
            forecasts.add_metric(list(key), value)
        yield forecasts
        latency = HistogramMetricFamily(_PREFIX + "latency_seconds", "Bar end (its open time + interval) to the "
                                        "forecast's hand-over to MQTT, on this machine's clock")
        latency.add_metric([], cumulative(self.latency.bounds, list(self.latency.counts)), self.latency.total)
        yield latency
        phases = HistogramMetricFamily(_PREFIX + "boundary_phase_seconds", "Time a boundary spent reading bars, "
                                       "in forward passes and handing forecasts to MQTT", labels=["phase"])
        for phase, buckets in self.phases.items():
            phases.add_metric([phase], cumulative(buckets.bounds, list(buckets.counts)), buckets.total)
        yield phases
        counts = worker.counts
        for name, value, text in (
            ("batches", counts.batches, "Boundaries handled (one batched pass per bar time)"),
            ("dead_letters", worker.dead.buried, "Events moved to the dead-letter stream"),
            ("invalid_events", counts.invalid_events, "Events that are not a bar-closed event of a configured feed"),
            ("duplicate_events", counts.duplicate_events, "Events of a bar already predicted (not predicted again)"),
            ("superseded_events", worker.late.superseded,
             "Events of a bar older than the feed's last prediction: a late event or revision (not predicted)"),
            ("revised_forecasts", worker.late.revised, "Forecasts made again from a bar amended by a late trade"),
            ("handling_errors", counts.handling_errors, "Failed attempts at handling events (retried apart)"),
            ("record_errors", counts.record_errors, "Boundaries whose Redis bookkeeping Redis refused"),
            ("fallback_fits", worker.fallback.fits, "Fits of the fallback baselines"),
        ):
            yield CounterMetricFamily(_PREFIX + name, text, value=value)
        guarded = CounterMetricFamily(_PREFIX + "guarded", "Forecasts the output guard replaced, by reason",
                                      labels=["reason"])
        for reason, value in dict(worker.guards.by_reason).items():
            guarded.add_metric([reason], value)
        yield guarded
        yield from self._gauges(worker)

    def _gauges(self, worker: Worker) -> Iterator[Metric]:
        if self.pending is not None:
            yield GaugeMetricFamily(_PREFIX + "pending_events", "Events of the consumer group read and not yet "
                                    "acknowledged (all consumers)", value=self.pending)
        if self.own_pending is not None:
            yield GaugeMetricFamily(_PREFIX + "own_pending_events", "Events this consumer read and has not yet "
                                    "acknowledged", value=self.own_pending)
        yield GaugeMetricFamily(_PREFIX + "unpublished", "Forecasts waiting for the MQTT broker",
                                value=worker.publisher.unpublished)
        yield GaugeMetricFamily(_PREFIX + "mqtt_connected", "1 while the MQTT broker is connected",
                                value=1 if worker.publisher.connected else 0)
        last = GaugeMetricFamily(_PREFIX + "last_phase_seconds", "The last boundary's (or bookkeeping's) times",
                                 labels=["phase"])
        for name, ms in dict(worker.timings).items():
            last.add_metric([name.removesuffix("_ms")], ms / 1000)
        yield last
        info = GaugeMetricFamily(_PREFIX + "model_info", "The model serving (version 'baseline' before the "
                                 "first one)", labels=["name", "version"])
        model = worker.model
        if model is not None:
            info.add_metric([model.predictor.name, model.version or "baseline"], 1)
        else:
            fallback = worker.fallback.har or worker.fallback.ewma
            info.add_metric([fallback.name, "baseline"], 1)
        yield info


async def serve_metrics(worker: Worker) -> None:
    """The worker's /metrics and its pending-events poll, until cancelled (nothing when
    ``metrics.enabled`` is off)."""
    settings = worker.settings.metrics
    if not settings.enabled:
        return
    metrics = ForecasterMetrics(worker)
    async with serving_metrics(settings, "forecast", new_registry([metrics])):
        worker.recorded.append(metrics.recorded)
        try:
            await metrics.poll_pending()
        finally:
            worker.recorded.remove(metrics.recorded)
