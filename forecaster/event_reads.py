"""Reading a consumer group's entries from the event shards (``redis.event_shards``).

With one shard (the default) a read is the one XREADGROUP of old. With several on one Redis node
it is still one XREADGROUP, naming every shard (a blocking read returns as soon as any has
entries). On a Redis Cluster the shards are in different slots and one command may name only
one: a non-blocking read asks each shard at once (concurrently), and a blocking read keeps one
blocking XREADGROUP per shard running (``Blocking``) and returns what the first ones delivered;
the others go on and deliver at a later read. A read is never cancelled halfway, except when the
worker stops: what Redis delivered to a cancelled read is in this consumer's pending list, which
the worker reads first when it starts again.

Several workers of a group split the shards between them (``owned``): each reads new events only
from its own, so a feed stays with one worker from one boundary to the next. Read by whichever
worker's read Redis served first, a feed moved at about every other boundary with two workers,
and each move cost the worker that got it four reads to rebuild what the other one held (the bars
it missed, the previous prediction, the window of realised errors, the band calibrator's state):
two workers used 1.6x the CPU of one for the same forecasts (benchmarks/scale.py). The split is
the live consumers (the group's, whose alive key says "1", see the worker's heartbeat), sorted by
name, shard k to the (k mod n)-th; it is looked at again every ``refresh_s``. A worker always
counts itself, and one that is gone stops counting once its alive key expires (``claim_idle``):
its shards then go to the others, which read on from where the group's last delivery was, and its
pending events are claimed as before. With more live workers than shards, or when the others
cannot be read, every worker reads every shard, as before. Pending entries (``"0"`` and the like,
after a restart) are read from every shard whatever the split.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from volcast.aio import raise_if_cancelled
from volcast.connections import is_cluster
from volcast.redis_text import as_text

log = logging.getLogger(__name__)

Entries = list[tuple[bytes, dict[bytes, bytes]]]
"""The entries a read returned from one shard (an entry's fields are empty when it was deleted)."""
READ_COUNT = 10_000
"""The most entries the worker asks for in one read."""
_TURNS = 4
"""Turns of the event loop a non-blocking read waits for a blocking read's reply already sent."""


def _by_shard(reply: Any, shard_of: Mapping[str, int]) -> list[tuple[int, Entries]]:
    out: list[tuple[int, Entries]] = []
    for stream, entries in reply or []:
        if entries:
            out.append((shard_of[as_text(stream)], entries))
    return out


class ShardReader:
    """XREADGROUP over the shards ``streams`` (index = shard) for one consumer of one group."""

    def __init__(self, redis: aioredis.Redis, streams: Sequence[str], group: str, consumer: str, *,
                 alive_key: Callable[[str], str] | None = None, claim_idle_ms: int = 30_000) -> None:
        self.redis = redis
        self.streams = list(streams)
        self.group = group
        self.consumer = consumer
        self._shard_of = {stream: k for k, stream in enumerate(self.streams)}
        self._apart = len(self.streams) > 1 and is_cluster(redis)
        self._blocking: dict[int, asyncio.Task[Entries]] = {}
        self._error: BaseException | None = None
        # The split of the shards between the group's live workers (None: no split, every shard).
        self._alive_key = alive_key if len(self.streams) > 1 else None
        self._claim_idle_ms = claim_idle_ms
        self.refresh_s = min(5.0, max(0.1, claim_idle_ms / 4000))
        self._refreshed = -math.inf
        self.owned: frozenset[int] = frozenset(range(len(self.streams)))
        self.workers = 1  # live workers of the group at the last look (self included)

    async def refresh(self) -> None:
        """Look at the group's live workers again and take this one's shards of them."""
        assert self._alive_key is not None
        self._refreshed = time.monotonic()
        try:
            infos = self.redis.pipeline(transaction=False)
            for stream in self.streams:
                infos.xinfo_consumers(stream, self.group)
            idle: dict[str, int] = {}  # the least over the shards: a worker reads only its own
            for rows in await infos.execute():
                for row in rows:
                    name = as_text(row["name"])
                    ms = int(row.get("idle", 0))
                    idle[name] = min(idle.get(name, ms), ms)
            # A consumer idle for ten claim periods is long gone (its alive key expired long
            # ago): no GET for each name a restarted worker left in the group.
            names = sorted(n for n, quiet in idle.items() if quiet < 10 * self._claim_idle_ms and n != self.consumer)
            alive: list[Any] = []
            if names:
                pipe = self.redis.pipeline(transaction=False)  # GETs, not an MGET: on a cluster the keys are apart
                for name in names:
                    pipe.get(self._alive_key(name))
                alive = await pipe.execute()
        except (RedisError, OSError) as exc:  # the read itself says whether Redis is down
            log.debug("workers of the group not read, keeping shards %s: %s", sorted(self.owned), exc)
            return
        owners = sorted([n for n, a in zip(names, alive, strict=True) if a == b"1"] + [self.consumer])
        shards = range(len(self.streams))
        me = owners.index(self.consumer)
        owned = frozenset(shards) if len(owners) > len(self.streams) else frozenset(
            k for k in shards if k % len(owners) == me)
        if owned != self.owned or len(owners) != self.workers:
            log.info("%d live worker(s) in group %s: %s reads event shard(s) %s", len(owners), self.group,
                     self.consumer, ", ".join(str(k) for k in sorted(owned)))
        self.owned, self.workers = owned, len(owners)

    async def _own(self, ids: Mapping[int, str]) -> Mapping[int, str]:
        """``ids`` without the new reads (``>``) of shards other workers own."""
        if self._alive_key is None:
            return ids
        if time.monotonic() - self._refreshed >= self.refresh_s:
            await self.refresh()
        owned = self.owned
        return {k: i for k, i in ids.items() if i != ">" or k in owned}

    async def read(self, ids: Mapping[int, str], count: int, block: int | None = None) -> list[tuple[int, Entries]]:
        """Entries after ``ids`` (shard -> id, ``>`` for new ones) from those shards, shard by shard
        (new ones only from the shards this worker owns)."""
        ids = await self._own(ids)
        if not ids:
            return []
        if not self._apart:
            reply = await self.redis.xreadgroup(self.group, self.consumer, {self.streams[k]: i for k, i in ids.items()},
                                                count=count, block=block)
            raise_if_cancelled()
            return _by_shard(reply, self._shard_of)
        if block is not None:
            return await self._blocking_read(ids, count, block)
        # A shard that fails (its master died, a failover under way) must not discard what the
        # others delivered: those entries are in this consumer's pending list now, and a worker
        # reads its own pending list only when it starts. So they are returned, and the error
        # raised only when no shard delivered anything (the failing shard fails again next read).
        replies = await asyncio.gather(*[self._one(k, i, count, None) for k, i in ids.items()],
                                       return_exceptions=True)
        raise_if_cancelled()
        out = await self._delivered_meanwhile([k for k, i in ids.items() if i == ">"])
        error: BaseException | None = None
        for k, got in zip(ids, replies, strict=True):
            if isinstance(got, BaseException):
                error = error or got
            elif got:
                out.append((k, got))
        if error is not None and not out:
            raise error
        return out

    async def _delivered_meanwhile(self, shards: Sequence[int]) -> list[tuple[int, Entries]]:
        """What the blocking reads still running on ``shards`` delivered, once this read's replies
        came back: a shard's blocking read is served the first entry of a burst as soon as it is
        written, and the non-blocking read then gets the rest. Without this, that first entry
        waited for the next read, and every boundary became two or three passes (one per shard
        whose blocking read had fired), each paying a boundary's fixed costs (about 6.5 ms of a
        worker's CPU against 0.09 ms a feed, benchmarks/scale.py). The blocking reply was written to its connection
        before this read's reply on the same node, so it is at most a few turns of the loop away;
        one that is not there yet is delivered at the next read, as before. Older than what this
        read got from the same shard: it comes first."""
        waiting = [self._blocking[k] for k in shards if k in self._blocking]
        for _ in range(_TURNS):
            if all(task.done() for task in waiting):
                break
            await asyncio.sleep(0)
        out, failed = self._harvest(shards)
        self._error = self._error or failed  # raised at the next blocking read, as there
        return out

    def _harvest(self, shards: Iterable[int]) -> tuple[list[tuple[int, Entries]], BaseException | None]:
        """The entries of the blocking reads on ``shards`` that are done (they stop running), and
        the first error one of them failed with."""
        out: list[tuple[int, Entries]] = []
        error: BaseException | None = None
        for k in shards:
            task = self._blocking.get(k)
            if task is None or not task.done():
                continue
            del self._blocking[k]
            failed = task.exception()
            if failed is not None:
                error = error or failed
            elif entries := task.result():
                out.append((k, entries))
        return out, error

    async def _one(self, shard: int, after: str, count: int, block: int | None) -> Entries:
        reply: Any = await self.redis.xreadgroup(self.group, self.consumer, {self.streams[shard]: after},
                                                 count=count, block=block)
        return reply[0][1] if reply else []

    async def _blocking_read(self, ids: Mapping[int, str], count: int, block: int) -> list[tuple[int, Entries]]:
        for k, after in ids.items():
            if k not in self._blocking:
                self._blocking[k] = asyncio.create_task(self._one(k, after, count, block))
        if self._error is not None:
            earlier, self._error = self._error, None
            raise earlier
        await asyncio.wait(self._blocking.values(), return_when=asyncio.FIRST_COMPLETED)
        out, failed = self._harvest(list(self._blocking))
        # Raised at the next read if another shard delivered entries: they are in this
        # consumer's pending list now, and must be handled.
        self._error = self._error or failed
        if not out and self._error is not None:
            error, self._error = self._error, None
            raise error
        return out

    def close(self) -> None:
        """Stop the blocking reads still running (the worker stops)."""
        for task in self._blocking.values():
            task.cancel()
        self._blocking.clear()
