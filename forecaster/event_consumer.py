"""The bar-closed events of the worker's interval, read with a Redis consumer group: several
workers share the feeds, and a dead worker's events are claimed by another (XPENDING + XCLAIM
after ``forecaster.claim_idle``). An event is acknowledged only once its predictions are
confirmed by the broker and recorded, so no bar is skipped.

A read is a blocking read, then whatever else has arrived, so a burst of closes is one batch.
After a restart under a fixed consumer name this consumer's own pending entries come first; an
entry delivered more than ``dead_letter_after`` times is dead-lettered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from forecaster.dead_letters import DeadLetters
from forecaster.event_reads import READ_COUNT, Entries, ShardReader
from forecaster.event_triage import EventTriage
from forecaster.events import Event, EventParser
from forecaster.handoffs import Handoffs
from forecaster.publisher import Publisher
from forecaster.serving import ModelSwap
from volcast.aio import raise_if_cancelled
from volcast.backoff import Backoff, retry_later
from volcast.keys import RedisKeys
from volcast.redis_problems import TRANSIENT, key_problem
from volcast.redis_text import as_text
from volcast.settings import Settings

log = logging.getLogger(__name__)

BLOCK_MS = 1_000


class EventConsumer:
    """Reads, claims and acknowledges the events; ``triage`` handles what is read and claimed."""

    def __init__(self, settings: Settings, redis: aioredis.Redis, keys: RedisKeys, consumer: str,
                 streams: Sequence[str], reader: ShardReader, events: EventParser, dead: DeadLetters,
                 publisher: Publisher, swap: ModelSwap, handoffs: Handoffs, triage: EventTriage) -> None:
        self.settings = settings
        self.redis = redis
        self.keys = keys
        self.consumer = consumer
        self.streams = streams
        self.stream = streams[0]
        self.group = settings.forecaster.group
        self.reader = reader
        self.events = events
        self.dead = dead
        self.publisher = publisher
        self.swap = swap
        self.handoffs = handoffs
        self.triage = triage
        self._dead_after = settings.forecaster.dead_letter_after
        self._last_claim = 0.0
        claim_idle = settings.forecaster.claim_idle
        self._claim_every_s = claim_idle / 4000
        # The read blocks no longer than the claim cadence, so a dead worker's events are claimed
        # within about claim_idle * 1.25: before the feed's next bar when claim_idle < interval.
        self._block_ms = max(20, min(BLOCK_MS, claim_idle // 4))

    async def consume(self) -> None:
        """Read, forecast, publish; Redis outages are retried with backoff, never fatal.

        A Redis answer that retrying cannot cure on the events stream itself (a key of the wrong
        type) ends the service with one message naming the key (``RedisDataProblem``). A failure
        in handling events never reaches this loop: ``EventTriage.process`` retries them apart and
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
                    await self.swap.poll()
                    if self.handoffs.stash:
                        stashed, self.handoffs.stash = self.handoffs.stash, []
                        await self.triage.process(stashed)
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
                    await self.triage.process(events)
                    backoff.reset()
                except ResponseError as exc:
                    group_ready = False
                    if "NOGROUP" in str(exc):
                        continue  # Redis lost the group (restart without persistence): create it again
                    raise key_problem(self.stream, exc, expected="stream of bar-closed events") from None
                except TRANSIENT as exc:
                    group_ready = False  # a Redis that restarted may have lost it
                    await retry_later(backoff, exc, log)
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
            await self.triage.process(events)

    async def acknowledge(self) -> None:
        """XACK each batch once its predictions are out, in order."""
        backoff = Backoff(0.1, 5.0)
        while True:
            ticket, ids, recorded = await self.handoffs.acks.get()
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
                    await retry_later(backoff, exc, log)
