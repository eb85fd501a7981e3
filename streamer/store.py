"""The bar store: closed bars, open bars and feed health in Redis, surviving Redis outages.

Closed bars go through a bounded in-memory buffer to one writer, in order. While Redis is down
the buffer holds them (counted; past ``streamer.buffer_bars`` the oldest are dropped and
counted) and the writer retries with backoff, so nothing is lost for outages the buffer covers.
Before writing after a (re)connection the writer reads each stream's last entry and skips bars
already there, so a batch whose reply was lost is not written twice, nor its events sent twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamer.health import FeedHealth
from volcast.backoff import Backoff
from volcast.bar import Bar
from volcast.keys import Feed, RedisKeys

log = logging.getLogger(__name__)

# Errors that mean "Redis is not reachable right now": retry later, keep the data.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)

EVENTS_MAXLEN = 100_000
_BATCH = 500
# How far back the resume point looks for the last bar that had trades (for its last trade id).
_ID_LOOKBACK = 1_000


def _stream_id(open_time_ms: int) -> str:
    return f"{open_time_ms}-0"


_Entries = list[tuple[bytes, dict[bytes | str, bytes | str]]]


def _entries(reply: Any) -> _Entries:
    """XRANGE/XREVRANGE reply (the client does not decode)."""
    return cast(_Entries, reply or [])


def _open_time(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where a feed left off: the first bar to build, the price empty bars carry, and the id of
    the last trade already in a closed bar (None: unknown, resume by time)."""

    start_ms: int
    last_close: Decimal
    last_trade_id: int | None


@dataclass(slots=True)
class StoreCounters:
    bars_written: int = 0
    buffered_max: int = 0  # the most closed bars ever held waiting for Redis
    dropped_bars: int = 0  # closed bars lost because the buffer overflowed during an outage
    redis_errors: int = 0
    redis_reconnects: int = 0


class BarStore:
    """Writes closed bars (buffered, in order), open bars and health hashes of many feeds."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: RedisKeys,
        *,
        retention_bars: int,
        buffer_bars: int,
        backoff: Backoff,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.retention_bars = retention_bars
        self.counters = StoreCounters()
        self._buffer: deque[tuple[Feed, Bar]] = deque()
        self._buffer_bars = buffer_bars
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._backoff = backoff
        self._last_written: dict[Feed, int] = {}
        self._connected = False

    # -- reading the resume point -------------------------------------------------------------

    async def resume_point(self, feed: Feed) -> ResumePoint | None:
        """The feed's last closed bar in Redis (None for a new feed); retries while Redis is down."""
        while True:
            try:
                return await self._resume_point(feed)
            except REDIS_DOWN as exc:
                delay = self._backoff.next_delay()
                log.warning("redis unreachable reading %s (%r); retry in %.1fs", feed, exc, delay)
                await asyncio.sleep(delay)

    async def _resume_point(self, feed: Feed) -> ResumePoint | None:
        entries = _entries(await self.redis.xrevrange(self.keys.bars(feed), count=1))
        if not entries:
            return await self._resume_from_open_bar(feed)
        last = Bar.from_fields(entries[0][1])
        start = last.open_time_ms + feed.interval_ms
        if last.last_trade_id is not None:
            return ResumePoint(start, last.close, last.last_trade_id)
        # The last bar was empty: the id to resume after lies in an earlier bar.
        for _entry_id, fields in _entries(await self.redis.xrevrange(self.keys.bars(feed), count=_ID_LOOKBACK)):
            bar = Bar.from_fields(fields)
            if bar.last_trade_id is not None:
                return ResumePoint(start, last.close, bar.last_trade_id)
        return ResumePoint(start, last.close, None)

    async def _resume_from_open_bar(self, feed: Feed) -> ResumePoint | None:
        """A feed stopped before its first bar closed left only its forming bar (until its TTL):
        rebuild that bar from its first trade rather than start afresh and lose its start."""
        fields = await self.redis.hgetall(self.keys.open_bar(feed))
        if not fields:
            return None
        try:
            bar = Bar.from_fields(fields)
        except ValueError:
            return None
        if bar.first_trade_id is None:
            return None
        return ResumePoint(bar.open_time_ms, bar.open, bar.first_trade_id - 1)

    # -- closed bars --------------------------------------------------------------------------

    def put(self, feed: Feed, bar: Bar) -> None:
        """Queue a closed bar (synchronous: the aggregator's callback)."""
        self._buffer.append((feed, bar))
        if len(self._buffer) > self._buffer_bars:
            dropped_feed, dropped = self._buffer.popleft()
            self.counters.dropped_bars += 1
            log.error("bar buffer full: dropped %s bar %d", dropped_feed, dropped.open_time_ms)
        self.counters.buffered_max = max(self.counters.buffered_max, len(self._buffer))
        self._idle.clear()
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    async def drained(self) -> None:
        """Wait until every queued bar is in Redis."""
        await self._idle.wait()

    async def run_writer(self) -> None:
        """Write queued bars forever, in order; reconnect with backoff while Redis is down."""
        while True:
            if not self._buffer:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self.write_pending()
            except REDIS_DOWN as exc:
                self.counters.redis_errors += 1
                self._connected = False
                delay = self._backoff.next_delay()
                log.warning("redis down (%r): %d bars buffered, retry in %.1fs", exc, len(self._buffer), delay)
                await asyncio.sleep(delay)

    async def write_pending(self) -> None:
        """Write everything queued now; raises a REDIS_DOWN error and keeps the rest on failure."""
        while self._buffer:
            if not self._connected:
                await self._load_last_written({feed for feed, _ in self._buffer})
                if self.counters.redis_errors:
                    self.counters.redis_reconnects += 1
                self._connected = True
            batch = [self._buffer[i] for i in range(min(_BATCH, len(self._buffer)))]
            await self._write_batch(batch)
            for _ in batch:
                self._buffer.popleft()
            self._backoff.reset()

    async def _load_last_written(self, feeds: Iterable[Feed]) -> None:
        for feed in feeds:
            entries = _entries(await self.redis.xrevrange(self.keys.bars(feed), count=1))
            self._last_written[feed] = _open_time(entries[0][0]) if entries else -1

    async def _write_batch(self, batch: list[tuple[Feed, Bar]]) -> None:
        pipe = self.redis.pipeline(transaction=True)
        written: list[tuple[Feed, Bar]] = []
        for feed, bar in batch:
            last = self._last_written.get(feed)
            if last is None:
                await self._load_last_written([feed])
                last = self._last_written[feed]
            if bar.open_time_ms <= last:
                continue  # already in Redis (a retried batch, or a restart that re-closed it)
            minid = bar.open_time_ms - (self.retention_bars - 1) * feed.interval_ms
            pipe.xadd(
                self.keys.bars(feed),
                bar.to_fields(),  # type: ignore[arg-type]
                id=_stream_id(bar.open_time_ms),
                minid=minid,
                approximate=True,
            )
            pipe.xadd(
                self.keys.bar_events(feed.interval_ms),
                {
                    "exchange": feed.exchange,
                    "symbol": feed.symbol,
                    "interval": feed.interval,
                    "open_time_ms": str(bar.open_time_ms),
                    "status": bar.status.value,
                },
                maxlen=EVENTS_MAXLEN,
                approximate=True,
            )
            written.append((feed, bar))
            self._last_written[feed] = bar.open_time_ms
        if not written:
            return
        try:
            results = await pipe.execute(raise_on_error=False)
        except BaseException:
            self._last_written.clear()  # unknown what landed: re-read before the retry
            raise
        for result in results:
            if isinstance(result, ResponseError) and "equal or smaller" not in str(result):
                raise result
        self.counters.bars_written += len(written)

    # -- open bars and health -----------------------------------------------------------------

    async def write_status(
        self, open_bars: Iterable[tuple[Feed, Bar | None]], health: Iterable[tuple[Feed, FeedHealth]], ttl_ms: int
    ) -> None:
        """One round trip: every feed's forming bar and health hash (with its heartbeat TTL)."""
        now = int(time.time() * 1000)
        pipe = self.redis.pipeline(transaction=False)
        for feed, bar in open_bars:
            if bar is None:
                continue
            fields: dict[str, str] = {**bar.to_fields(), "updated_ms": str(now)}
            pipe.hset(self.keys.open_bar(feed), mapping=fields)  # type: ignore[arg-type]
            pipe.pexpire(self.keys.open_bar(feed), ttl_ms)
        for feed, state in health:
            pipe.hset(self.keys.health(feed), mapping=state.to_fields(now))  # type: ignore[arg-type]
            pipe.pexpire(self.keys.health(feed), ttl_ms)
        await pipe.execute()
