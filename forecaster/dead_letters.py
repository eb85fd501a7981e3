"""Dead letters: events the worker cannot handle, set aside with the reason instead of retried for ever.

An event goes here when it is not an event at all (``Event.problem``), when handling it failed
``forecaster.dead_letter_after`` times in a row, or when it was delivered that many times
without being acknowledged (each worker that took it stopped before it was done: a crash loop).
It is copied to the dead-letter stream first, then acknowledged, so a stop between the two
leaves it pending (handled again, or buried twice), never lost. ``volcast status`` shows the
count and the last one; ``XRANGE <prefix>:events:bars:<interval>:dead - +`` lists them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from forecaster.events import Event
from volcast.keys import RedisKeys

log = logging.getLogger(__name__)

DEAD_MAXLEN = 10_000
"""Dead letters kept (the oldest are trimmed): enough to diagnose, bounded for a flood of garbage."""


class DeadLetters:
    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, interval_ms: int, group: str, consumer: str,
                 shards: int = 1) -> None:
        self._redis = redis
        # Per event shard its dead letters, in the shard's slot (one pipeline may then write both).
        self._streams = keys.event_streams(interval_ms, shards)
        self.keys = [keys.dead_events(interval_ms, k, shards) for k in range(shards)]
        self.key = self.keys[0]
        self._status = keys.forecaster()
        self._group = group
        self._consumer = consumer
        self.buried = 0

    async def bury(self, dead: Sequence[tuple[Event, str, int]]) -> None:
        """Set aside each (event, reason, failures) and acknowledge it. Redis errors propagate:
        the events then stay pending, and are buried when next handled."""
        if not dead:
            return
        now = str(time.time_ns() // 1_000_000)
        pipe = self._redis.pipeline(transaction=False)
        for event, reason, failures in dead:
            fields: dict[Any, Any] = dict(event.fields)
            fields.update({b"event_id": event.entry_id, b"error": reason[:1000], b"failures": str(failures),
                           b"consumer": self._consumer, b"dead_ms": now})
            pipe.xadd(self.keys[event.shard], fields, maxlen=DEAD_MAXLEN, approximate=True)
        for shard in sorted({event.shard for event, _, _ in dead}):
            pipe.xack(self._streams[shard], self._group, *[e.entry_id for e, _, _ in dead if e.shard == shard])
        last_event, last_reason, _ = dead[-1]
        pipe.hincrby(self._status, "dead_letters", len(dead))
        status: dict[Any, Any] = {
            "last_dead_letter": f"{last_event.entry_id.decode(errors='replace')}: {last_reason}"[:500],
            "last_dead_letter_ms": now,
        }
        pipe.hset(self._status, mapping=status)
        await pipe.execute()
        self.buried += len(dead)
        for event, reason, failures in dead[:5]:
            log.error("event %s dead-lettered after %d failure(s): %s", event.entry_id.decode(errors="replace"),
                      failures, reason)
        if len(dead) > 5:
            log.error("... and %d more events dead-lettered (see %s)", len(dead) - 5, ", ".join(self.keys))
