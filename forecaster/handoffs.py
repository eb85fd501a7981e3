"""What the forecaster's tasks hand each other, and the waits that keep work after a boundary off
the critical path of the next one.

The boundary pass (forecaster/boundary_pass.py) puts each published boundary on three queues: its
Redis bookkeeping (``records``, forecaster/bookkeeping.py), the next boundary's head start
(``prepares``, forecaster/preparation.py) and the acknowledgement of its events (``acks``,
forecaster/event_consumer.py). Events it read ahead for a later boundary go back to the consume
loop in ``stash``. The bookkeeping and the preparation run only once the broker confirmed the
boundary and the whole boundary is predicted (``until_out``).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from forecaster.bar_reader import BarHistories
from forecaster.events import Event
from forecaster.payload import Prediction
from forecaster.publisher import Publisher, Ticket

RECORD_DEFER_S = 1.0
"""The longest the Redis bookkeeping of a published boundary waits for the worker to be idle."""
RECORD_AFTER_PUBLISH_S = 0.25
"""... and for the broker to confirm its predictions (it starts once both are done)."""


@dataclass(frozen=True, slots=True)
class BoundaryRecord:
    """A published boundary waiting for its Redis bookkeeping; ``done`` releases its acks."""

    open_ms: int
    predictions: list[Prediction]
    payloads: list[bytes]
    latest: list[bool]
    last_volumes: list[float]
    timings: dict[str, float]
    done: asyncio.Event
    ticket: dict[str, int]


class Handoffs:
    """The queues and signals between the consume task (which runs the boundaries) and the
    record, prepare and acknowledge tasks."""

    def __init__(self, publisher: Publisher, bars: BarHistories, interval_ms: int) -> None:
        self.publisher = publisher
        self.bars = bars
        self.interval_ms = interval_ms
        self.records: asyncio.Queue[BoundaryRecord] = asyncio.Queue()
        # Boundaries published (bar open time, their MQTT ticket) whose next one can be prepared.
        self.prepares: asyncio.Queue[tuple[int, Ticket]] = asyncio.Queue()
        # (ticket, [(event shard, entry id)], recorded): acknowledged once published and recorded.
        self.acks: asyncio.Queue[tuple[Ticket, list[tuple[int, bytes]], asyncio.Event | None]] = asyncio.Queue()
        self.stash: list[Event] = []  # events read ahead that belong to a later boundary
        self.newest_ms: int | None = None  # the newest boundary predicted
        self.idle = asyncio.Event()  # set while no boundary is being processed
        self.idle.set()
        self.boundary_done = asyncio.Event()  # replaced by a fresh one as each batch ends
        # Lasting state was built (a model loaded, full reads of bars): freeze it once idle, see
        # heap.py. Imports and the connections are lasting state too.
        self.settle_due = True
        # A model was swapped or demoted: the next settle thaws what earlier ones froze first.
        self.thaw_due = False

    def batch_ended(self) -> None:
        done, self.boundary_done = self.boundary_done, asyncio.Event()
        done.set()

    async def until_idle(self) -> None:
        """Let a boundary being predicted go first (the next batch of a burst of closes often
        arrives while the previous one is recorded), but not for longer than RECORD_DEFER_S."""
        await asyncio.sleep(0)
        if not self.idle.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RECORD_DEFER_S):
                    await self.idle.wait()

    async def until_out(self, open_ms: int, ticket: Ticket) -> None:
        """Until the broker confirmed boundary ``open_ms`` (at most RECORD_AFTER_PUBLISH_S: it
        forwards the predictions to subscribers meanwhile, and work after a boundary should not
        take the CPU from it, unless it cannot be reached) and the whole boundary is predicted."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(RECORD_AFTER_PUBLISH_S):
                await self.publisher.published(ticket)
        await self.until_complete(open_ms)

    async def until_complete(self, open_ms: int) -> None:
        """``until_idle``, and until the rest of boundary ``open_ms`` is predicted too: the
        streamer writes 500 bars per transaction, so 1000 feeds' events come as two batches, and
        the first one's bookkeeping started in the gap between them delayed the second one's
        predictions by 10-20 ms. Complete means: no feed this worker held at the bar before is
        still waiting for bar ``open_ms`` (a feed another worker of the group serves now also
        waits, so never longer than RECORD_DEFER_S)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(RECORD_DEFER_S):
                while True:
                    await self.until_idle()
                    if self.newest_ms != open_ms or not self.bars.matrix.ending_at(open_ms - self.interval_ms):
                        return
                    await self.boundary_done.wait()
