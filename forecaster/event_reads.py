"""Reading a consumer group's entries from the event shards (``redis.event_shards``).

With one shard (the default) a read is the one XREADGROUP of old. With several on one Redis node
it is still one XREADGROUP, naming every shard (a blocking read returns as soon as any has
entries). On a Redis Cluster the shards are in different slots and one command may name only
one: a non-blocking read asks each shard at once (concurrently), and a blocking read keeps one
blocking XREADGROUP per shard running (``Blocking``) and returns what the first ones delivered;
the others go on and deliver at a later read. A read is never cancelled halfway, except when the
worker stops: what Redis delivered to a cancelled read is in this consumer's pending list, which
the worker reads first when it starts again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis

from volcast.aio import raise_if_cancelled
from volcast.connections import is_cluster

Entries = list[tuple[bytes, dict[bytes, bytes]]]
"""The entries a read returned from one shard (an entry's fields are empty when it was deleted)."""


def _by_shard(reply: Any, shard_of: Mapping[str, int]) -> list[tuple[int, Entries]]:
    out: list[tuple[int, Entries]] = []
    for stream, entries in reply or []:
        if entries:
            out.append((shard_of[stream.decode() if isinstance(stream, bytes) else stream], entries))
    return out


class ShardReader:
    """XREADGROUP over the shards ``streams`` (index = shard) for one consumer of one group."""

    def __init__(self, redis: aioredis.Redis, streams: Sequence[str], group: str, consumer: str) -> None:
        self.redis = redis
        self.streams = list(streams)
        self.group = group
        self.consumer = consumer
        self._shard_of = {stream: k for k, stream in enumerate(self.streams)}
        self._apart = len(self.streams) > 1 and is_cluster(redis)
        self._blocking: dict[int, asyncio.Task[Entries]] = {}
        self._error: BaseException | None = None

    async def read(self, ids: Mapping[int, str], count: int, block: int | None = None) -> list[tuple[int, Entries]]:
        """Entries after ``ids`` (shard -> id, ``>`` for new ones) from those shards, shard by shard."""
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
        out: list[tuple[int, Entries]] = []
        error: BaseException | None = None
        for k, got in zip(ids, replies, strict=True):
            if isinstance(got, BaseException):
                error = error or got
            elif got:
                out.append((k, got))
        if error is not None and not out:
            raise error
        return out

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
        out: list[tuple[int, Entries]] = []
        for k, task in list(self._blocking.items()):
            if not task.done():
                continue
            del self._blocking[k]
            failed = task.exception()
            if failed is not None:
                # Raised at the next read if another shard delivered entries: they are in this
                # consumer's pending list now, and must be handled.
                self._error = self._error or failed
            elif entries := task.result():
                out.append((k, entries))
        if not out and self._error is not None:
            error, self._error = self._error, None
            raise error
        return out

    def close(self) -> None:
        """Stop the blocking reads still running (the worker stops)."""
        for task in self._blocking.values():
            task.cancel()
        self._blocking.clear()
