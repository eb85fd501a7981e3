"""The Redis bookkeeping of each published boundary (``Recorder``: predictions, realised errors,
live scores, status), in boundary order, in a task of its own after the hand-over to MQTT: it
waits while a boundary is being predicted, and its boundary's events are acknowledged once it is
done.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

from redis.exceptions import RedisError, ResponseError

from forecaster import heap
from forecaster.handoffs import BoundaryRecord, Handoffs
from forecaster.payload import Prediction
from forecaster.recorder import Recorder, Write
from forecaster.worker_counts import WorkerCounts
from volcast.aio import raise_if_cancelled
from volcast.backoff import Backoff, retry_later
from volcast.keys import RedisKeys

log = logging.getLogger(__name__)


class Bookkeeping:
    """``record``: the task that writes each published boundary to Redis."""

    def __init__(self, keys: RedisKeys, recorder: Recorder, handoffs: Handoffs, counts: WorkerCounts,
                 status: Callable[[], dict[str, str]]) -> None:
        self.keys = keys
        self.recorder = recorder
        self.handoffs = handoffs
        self.counts = counts
        self.status = status
        # Called with each published boundary's predictions and timings once recorded (metrics).
        self.recorded: list[Callable[[Sequence[Prediction], Mapping[str, float]], None]] = []

    async def record(self) -> None:
        """Write each published boundary's predictions, realised errors and scores, in order.

        Redis unavailable: retried with backoff (the boundary's events stay unacknowledged).
        A write Redis refuses (say, a key of the wrong type) is logged and counted, and the
        events are acknowledged anyway: retrying would hold every later boundary back.
        """
        backoff = Backoff(0.1, 5.0)
        while True:
            job = await self.handoffs.records.get()
            await self.handoffs.until_out(job.open_ms, job.ticket)
            started = time.perf_counter()
            writes: list[Write] | None = None
            while True:
                raise_if_cancelled()
                try:
                    if writes is None:
                        writes = await self.recorder.writes(job.predictions, job.payloads, job.latest,
                                                            job.last_volumes, self.handoffs.until_idle)
                        writes += self._status_writes(job)
                    await self.recorder.apply(writes)
                    backoff.reset()
                    break
                except ResponseError as exc:
                    self.counts.record_errors += 1
                    log.error("predictions of bar %d not recorded: %s", job.open_ms, exc)
                    break
                except (RedisError, OSError) as exc:
                    await retry_later(backoff, exc, log)
            job.done.set()
            for observe in self.recorded:
                observe(job.predictions, job.timings)
            self.counts.timings["record_ms"] = (time.perf_counter() - started) * 1000
            if self.handoffs.settle_due and self.handoffs.records.empty():
                await self.handoffs.until_idle()
                self.handoffs.settle_due = False
                heap.settle(thaw=self.handoffs.thaw_due)
                self.handoffs.thaw_due = False
            log.debug("bar %d: %d predictions; %s, record_ms %.1f", job.open_ms, len(job.predictions),
                      ", ".join(f"{k} {v:.1f}" for k, v in job.timings.items()), self.counts.timings["record_ms"])

    def _status_writes(self, job: BoundaryRecord) -> list[Write]:
        key = self.keys.forecaster()
        status = self.status()
        status["last_bar_ms"] = str(job.open_ms) if job.predictions else ""
        status["last_batch_size"] = str(len(job.predictions))
        flat: Write = ["h", key]
        for name, value in status.items():
            flat += [name, value]
        return [flat, ["i", key, "predictions", str(len(job.predictions))], ["i", key, "batches", "1"]]
