"""The bar store: closed bars, open bars and feed health in Redis, surviving Redis outages.

Closed bars go through a bounded in-memory buffer to one writer, in order. While Redis is down
the buffer holds them (counted; past ``streamer.buffer_bars`` the oldest are dropped and
counted) and the writer retries with backoff, so nothing is lost for outages the buffer covers.
Before writing after a (re)connection the writer reads each stream's last entry and skips bars
already there, so a batch whose reply was lost is not written twice, nor its events sent twice.

A bar and its event are written by one Lua script: both or neither (a bar whose event cannot be
written is removed again). On a Redis Cluster they are in different hash slots: the bar first,
then its event, with a mark that lets a restart send the events a stop left unsent
(streamer/announce.py). Redis errors that waiting does not fix (a key of the wrong type, an
ACL that forbids a key) become a ``KeyProblem`` naming the key and what to do: a feed's own key
stops that feed (``on_feed_error``); the shared events stream stops the service. Errors that do
pass (loading, OOM, read-only replica, ...) are retried like an outage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamer.announce import EVENTS_MAXLEN, WRITE_BAR_ALONE, Announcer, event_fields
from streamer.bar_revisions import AMEND_BAR, AMEND_BAR_ALONE, revision_id
from streamer.health import FeedHealth
from streamer.leases import FENCE_CHECK, FENCED_HSET, is_stale
from streamer.lost_bars import CHECK_NEWEST, RecentBars, lost_newest
from streamer.replica_wait import ReplicaWait
from volcast.backoff import Backoff
from volcast.bar import Bar
from volcast.connections import ConnectionProblem, is_cluster
from volcast.keys import Feed, RedisKeys
from volcast.redis_text import as_text

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class RedisBusyError(RedisConnectionError):
    """Redis answered with an error that passes (loading, out of memory, a read-only replica...)."""


# Errors that mean "Redis cannot take this right now": retry later, keep the data.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)

# Error codes of replies that say "not now" rather than "never" (Redis's own prefixes).
_TRANSIENT_CODES = frozenset(
    {"LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "READONLY", "OOM", "MISCONF", "NOREPLICAS",
     "UNBLOCKED", "NOTBUSY"}
)


class KeyProblem(ConnectionProblem):
    """Redis refuses a command on one of our keys for a reason waiting will not fix: one message
    naming the key and what to do. (A ConnectionProblem: the CLI prints it as one line, exit 1.)"""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _error_code(error: ResponseError) -> str:
    return str(error).split(" ", 1)[0]


def key_problem(key: str, error: ResponseError, action: str) -> KeyProblem | RedisBusyError:
    """What a refused command on ``key`` means: RedisBusyError if it passes, else the KeyProblem to report."""
    text = str(error)
    code = _error_code(error)
    if code in _TRANSIENT_CODES:
        return RedisBusyError(f"Redis refused {action} {key} for now: {text}")
    if code == "WRONGTYPE":
        advice = (
            "it is not volcast's: DEL it if nothing else needs it, or set redis.key_prefix to a prefix "
            "nothing else uses"
        )
        return KeyProblem(key, f"Redis key {key} holds another type of value ({text}); {advice}")
    if code == "NOPERM":
        return KeyProblem(
            key, f"Redis refused {action} {key}: {text}; allow the key pattern of redis.key_prefix in the ACL of "
            "the Redis user (VOLCAST_REDIS_USERNAME)"
        )
    return KeyProblem(key, f"Redis refused {action} {key}: {text}; this does not pass by retrying")


# One bar and its event, both or neither. KEYS: the feed's bar stream, the events stream. ARGV:
# entry id, MINID, events MAXLEN, the newest bar the stream must hold (lost_bars.py; -1: no check),
# n, then n field/value pairs of the bar, then the event's pairs. Returns 1 (written), 0 (already
# there) or ["lost", newest] (lost_bars.py); an error reply names the key and what failed.
_WRITE_BAR = """
for _, key in ipairs(KEYS) do
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'stream' and kind ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. kind .. ', not a stream')
  end
end
""" + CHECK_NEWEST + """
local n = tonumber(ARGV[5])
local bar, event = {}, {}
for i = 6, 5 + 2 * n do bar[#bar + 1] = ARGV[i] end
for i = 6 + 2 * n, #ARGV do event[#event + 1] = ARGV[i] end
local added = redis.pcall('XADD', KEYS[1], 'MINID', '~', ARGV[2], ARGV[1], unpack(bar))
if type(added) == 'table' and added.err then
  if string.find(added.err, 'equal or smaller', 1, true) then return 0 end
  return redis.error_reply(added.err .. ' [key ' .. KEYS[1] .. ']')
end
local sent = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(event))
if type(sent) == 'table' and sent.err then
  redis.call('XDEL', KEYS[1], ARGV[1])
  return redis.error_reply(sent.err .. ' [key ' .. KEYS[2] .. ']')
end
return 1
"""

_BATCH = 500
# How far back the resume point looks for the last bar that had trades (for its last trade id).
_ID_LOOKBACK = 1_000


_Entries = list[tuple[bytes, dict[bytes | str, bytes | str]]]


def _entries(reply: Any) -> _Entries:
    """XRANGE/XREVRANGE reply (the client does not decode)."""
    return cast(_Entries, reply or [])


def _open_time(entry_id: bytes | str) -> int:
    return int(as_text(entry_id).split("-", 1)[0])


def _pairs(*mappings: Mapping[str, str]) -> list[str | int]:
    """The field/value pairs of ``mappings``, flat, as a script's ARGV takes them."""
    return [item for mapping in mappings for pair in mapping.items() for item in pair]


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
    stale_writes: int = 0  # writes Redis refused because another streamer took the feed (leases)
    bars_amended: int = 0  # revisions of closed bars written (streamer/bar_revisions.py)
    amend_missing: int = 0  # revisions not written: their bar was no longer (or never) in Redis
    bars_restored: int = 0  # bars Redis lost (a failover) written again from memory (lost_bars.py)
    bars_not_restored: int = 0  # bars Redis lost that were older than the memory kept: missing


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
        event_shards: int = 1,
        replica_wait: ReplicaWait | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.retention_bars = retention_bars
        self.counters = StoreCounters()
        # (feed, bar, rev): rev 0 a closed bar, above 0 a revision of one (bar_revisions.py).
        self._buffer: deque[tuple[Feed, Bar, int]] = deque()
        self._buffer_bars = buffer_bars
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._backoff = backoff
        self._last_written: dict[Feed, int] = {}
        # Bars Redis lost behind our back (streamer/lost_bars.py): the newest bar Redis confirmed
        # per feed (not lowered by a re-read: a failover's loss shows as Redis holding less), the
        # bars kept to put back, and per feed the stream's newest bar and the kept bars after it to
        # write before its next bar (until a pipeline carried them).
        self._confirmed: dict[Feed, int] = {}
        self.recent = RecentBars()
        self._restoring: dict[Feed, tuple[int, list[tuple[Bar, int]]]] = {}
        self.restored: dict[Feed, int] = {}  # per feed: bars put back
        self.not_restored: dict[Feed, int] = {}  # per feed: lost bars older than the memory kept
        self._connected = False
        self.event_shards = event_shards
        # redis.wait_replicas: WAIT after each batch of bars, before their events (replica_wait.py).
        self.replica_wait = replica_wait
        # On a cluster a bar and its event are written one after the other (announce.py); with
        # wait_replicas on one node too, so that the WAIT comes between them.
        split = is_cluster(redis) or replica_wait is not None
        self.announcer = Announcer(redis, keys, event_shards) if split else None
        self._bar_script = WRITE_BAR_ALONE if self.announcer else _WRITE_BAR
        self._write_bar = redis.register_script(self._bar_script)
        self._amend_script = AMEND_BAR_ALONE if self.announcer else AMEND_BAR
        self._amend_bar = redis.register_script(self._amend_script)
        self._amend_bar_fenced = redis.register_script(FENCE_CHECK + self._amend_script)
        self._script_loaded = False  # a cluster pipeline does not load scripts itself
        # With leases (streamer/leases.py): each held feed's fencing token; its writes carry it, a
        # feed without one is not ours and its bars are not queued.
        self.tokens: dict[Feed, str] | None = None
        self._write_bar_fenced = redis.register_script(FENCE_CHECK + self._bar_script)
        self._fenced_hset = redis.register_script(FENCED_HSET)
        self._hset_loaded = False
        self.on_stale: Callable[[Feed], None] | None = None
        """Called when Redis refuses a feed's write for a stale token: the feed is no longer ours."""
        self.failed: dict[Feed, KeyProblem] = {}
        self.on_feed_error: Callable[[Feed, KeyProblem], None] | None = None
        """Called once for a feed whose own key Redis refuses for good; its bars are dropped."""

    def _feed_failed(self, feed: Feed, problem: KeyProblem) -> None:
        if feed in self.failed:
            return
        self.failed[feed] = problem
        dropped = sum(1 for f, _, _ in self._buffer if f == feed)
        if dropped:
            self._buffer = deque(item for item in self._buffer if item[0] != feed)
            self.counters.dropped_bars += dropped
        if self.on_feed_error is not None:
            self.on_feed_error(feed, problem)
        else:
            log.error("%s: %s", feed.symbol, problem)

    def _stale(self, feed: Feed, error: ResponseError) -> None:
        """A write refused by the fence: count it; the first for this token drops the feed's queue."""
        self.counters.stale_writes += 1
        if self.tokens is None or feed not in self.tokens:
            return
        del self.tokens[feed]
        self._last_written.pop(feed, None)
        self._forget(feed)
        dropped = sum(1 for f, _, _ in self._buffer if f == feed)
        if dropped:
            self._buffer = deque(item for item in self._buffer if item[0] != feed)
        log.warning("%s %s: write refused, the lease passed to another streamer (%s); %d queued bars left "
                    "to the new owner", feed.exchange, feed.symbol, error, dropped)
        if self.on_stale is not None:
            self.on_stale(feed)

    def _forget(self, feed: Feed) -> None:
        """A feed no longer ours: what it had in Redis is its new owner's."""
        self._confirmed.pop(feed, None)
        self._restoring.pop(feed, None)
        self.recent.forget(feed)

    def _refused(self, feed: Feed | None, key: str, error: ResponseError, action: str) -> None:
        """Raise what a refused command means (RedisBusyError or a shared key's KeyProblem); a feed's own
        key only stops that feed."""
        problem = key_problem(key, error, action)
        if isinstance(problem, RedisBusyError) or feed is None:
            raise problem
        self._feed_failed(feed, problem)

    async def check_events_key(self, interval_ms: int) -> None:
        """Before anything is written: the shared events streams must be streams (or absent)."""
        for key in self.keys.event_streams(interval_ms, self.event_shards):
            await self._check_events_key(key)

    async def _check_events_key(self, key: str) -> None:
        kind = await self.redis.type(key)
        kind = as_text(kind)
        if kind not in ("stream", "none"):
            raise KeyProblem(
                key,
                f"Redis key {key} holds a {kind}, not the stream of bar events: no bar can be announced; DEL it "
                "if nothing else needs it, or set redis.key_prefix to a prefix nothing else uses",
            )

    # -- reading the resume point -------------------------------------------------------------

    async def resume_point(self, feed: Feed) -> ResumePoint | None:
        """The feed's last closed bar in Redis (None for a new feed); retries while Redis is down.

        A KeyProblem if one of the feed's keys cannot be read for good (e.g. it is of another type).
        """
        # A feed taken (back) over starts from what Redis holds: nothing this process remembers of an
        # earlier lease of it (another streamer wrote it meanwhile) is put back (lost_bars.py).
        self._last_written.pop(feed, None)
        self._forget(feed)
        while True:
            try:
                return await self._resume_point(feed)
            except REDIS_DOWN as exc:
                delay = self._backoff.next_delay()
                log.warning("redis unreachable reading %s (%r); retry in %.1fs", feed, exc, delay)
                await asyncio.sleep(delay)

    async def _resume_point(self, feed: Feed) -> ResumePoint | None:
        key = self.keys.bars(feed)
        entries = _entries(await self._read(key, self.redis.xrevrange(key, count=1)))
        if not entries:
            return await self._resume_from_open_bar(feed)
        last = Bar.from_fields(entries[0][1])
        start = last.open_time_ms + feed.interval_ms
        if last.last_trade_id is not None:
            return ResumePoint(start, last.close, last.last_trade_id)
        # The last bar was empty: the id to resume after lies in an earlier bar.
        for _entry_id, fields in _entries(await self._read(key, self.redis.xrevrange(key, count=_ID_LOOKBACK))):
            bar = Bar.from_fields(fields)
            if bar.last_trade_id is not None:
                return ResumePoint(start, last.close, bar.last_trade_id)
        return ResumePoint(start, last.close, None)

    async def _read(self, key: str, call: Awaitable[_T]) -> _T:
        """A read of ``key``; a refusal becomes RedisBusyError (retried) or the KeyProblem naming it."""
        try:
            return await call
        except ResponseError as exc:
            raise key_problem(key, exc, "reading") from None

    async def _resume_from_open_bar(self, feed: Feed) -> ResumePoint | None:
        """A feed stopped before its first bar closed left only its forming bar (until its TTL):
        rebuild that bar from its first trade rather than start afresh and lose its start."""
        key = self.keys.open_bar(feed)
        fields = await self._read(key, self.redis.hgetall(key))
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
        self.amend(feed, bar, 0)

    def amend(self, feed: Feed, bar: Bar, rev: int) -> None:
        """Queue revision ``rev`` of a closed bar (0: the bar as it closed), in order after the bar
        itself: written over it in its stream, and its event sent again (bar_revisions.py)."""
        if feed in self.failed:
            return  # its key cannot take it; the feed is stopping
        if self.tokens is not None and feed not in self.tokens:
            return  # not (or no longer) ours: its owner writes it
        self._buffer.append((feed, bar, rev))
        if len(self._buffer) > self._buffer_bars:
            dropped_feed, dropped, _ = self._buffer.popleft()
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
        """Write queued bars forever, in order; reconnect with backoff while Redis is down.

        A KeyProblem on the shared events stream ends it (and the service): no bar may be written
        that cannot be announced.
        """
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
                await self._load_last_written({feed for feed, _, _ in self._buffer})
                if self.counters.redis_errors:
                    self.counters.redis_reconnects += 1
                self._connected = True
            batch = [self._buffer[i] for i in range(min(_BATCH, len(self._buffer)))]
            if not await self._write_batch(batch):
                continue  # a feed's stream lost bars: they go first, then this batch again (skipping what is in)
            # A feed that failed meanwhile had its bars removed from the buffer: pop by identity.
            done = {id(item) for item in batch}
            while self._buffer and id(self._buffer[0]) in done:
                self._buffer.popleft()
            self._backoff.reset()

    async def _load_last_written(self, feeds: Iterable[Feed]) -> None:
        feeds = list(feeds)
        if self.announcer is not None:
            await self._recover([feed for feed in feeds if feed not in self.failed])
        for feed in feeds:
            if feed in self.failed:
                continue
            key = self.keys.bars(feed)
            try:
                entries = _entries(await self.redis.xrevrange(key, count=1))
            except ResponseError as exc:
                self._refused(feed, key, exc, "reading")
                continue
            newest = _open_time(entries[0][0]) if entries else -1
            self._last_written[feed] = newest
            # Kept if higher: Redis holding less than it confirmed is a loss the bar script reports.
            self._confirmed[feed] = max(newest, self._confirmed.get(feed, -1))

    async def _write_batch(self, batch: list[tuple[Feed, Bar, int]]) -> bool:
        """Write ``batch``; False if a feed's stream had lost bars (lost_bars.py): they are put back
        first by the next call, and the batch is to be written again (what is in is skipped)."""
        pipe = self.redis.pipeline(transaction=False)
        # (feed, bar, rev, put back): a bar put back is announced as a bar (rev 0), counted apart.
        written: list[tuple[Feed, Bar, int, bool]] = []
        carried: list[dict[str, str] | None] = []  # per written bar: the fields its event carries
        tokens = self.tokens
        # Per feed, the newest bar Redis must hold before the next one: the one queued before it.
        chain: dict[Feed, int] = {}
        put_back: set[Feed] = set()
        for feed, bar, rev in batch:
            if feed in self.failed or (tokens is not None and feed not in tokens):
                continue
            last = self._last_written.get(feed)
            if last is None:
                await self._load_last_written([feed])
                if feed in self.failed:
                    continue
                last = self._last_written[feed]
            restoring = self._restoring.get(feed)
            if restoring is not None and feed not in put_back:
                put_back.add(feed)
                chain[feed], kept_bars = restoring
                for kept, kept_rev in kept_bars:
                    await self._queue_bar(pipe, feed, kept, kept_rev, chain)
                    written.append((feed, kept, 0, True))
                    carried.append(None)  # its event reads the bar: it may be a revision
                last = self._last_written[feed]
            if rev:
                await self._queue_revision(pipe, feed, bar, rev)
                written.append((feed, bar, rev, False))
                carried.append(None)
                continue
            if bar.open_time_ms <= last:
                continue  # already in Redis (a retried batch, or a restart that re-closed it)
            carried.append(await self._queue_bar(pipe, feed, bar, 0, chain, carry=True))
            written.append((feed, bar, 0, False))
        if not written:
            return True
        waits = self.replica_wait
        written_keys = {self.keys.bars(feed) for feed, _, _, _ in written} if waits else set()
        wait_nodes = waits.queue(pipe, written_keys) if waits else []
        try:
            if self.announcer is not None and not self._script_loaded:
                for script in (WRITE_BAR_ALONE, AMEND_BAR_ALONE):  # on every master
                    await self.redis.script_load(script)
                    await self.redis.script_load(FENCE_CHECK + script)
                self._script_loaded = True
            results = await pipe.execute(raise_on_error=False)
        except BaseException:
            self._last_written.clear()  # unknown what landed: re-read before the retry
            raise
        if waits is not None:
            results, replies = results[:len(written)], results[len(written):]
            waits.count(wait_nodes, replies, written_keys)
        count = 0
        lost: dict[Feed, int] = {}
        for (feed, bar, rev, again), result in zip(written, results, strict=True):
            newest = lost_newest(result)
            if newest is not None:
                lost[feed] = min(newest, lost.get(feed, newest))
                continue
            if isinstance(result, REDIS_DOWN):
                # redis-py's cluster pipeline returns a node's connection error as that command's
                # reply (raise_on_error=False): this bar did not land; before, it was taken for
                # written and dropped (seen killing a master: tests/test_lost_bars.py). Retried.
                self._last_written.clear()
                self.counters.bars_written += count
                raise result
            if not isinstance(result, ResponseError):
                if result in (0, 1) and not again:  # in Redis (kept as the newest revision)
                    self.recent.note(feed, bar, rev)
                if rev:
                    self._revision_written(feed, bar, rev, result)
                else:
                    count += result == 1 and not again
                    if again and result == 1:
                        self.counters.bars_restored += 1
                        self.restored[feed] = self.restored.get(feed, 0) + 1
                    self._confirmed[feed] = max(bar.open_time_ms, self._confirmed.get(feed, -1))
                continue
            if is_stale(result):
                self._stale(feed, result)
                continue
            self._last_written.clear()  # this bar (and maybe more) did not land: re-read before going on
            self.counters.bars_written += count
            if isinstance(result, NoScriptError):  # a Redis restarted between loading and running the script
                self._script_loaded = False
                raise RedisBusyError(f"the bar script is not loaded ({result})")
            events = self.keys.feed_events(feed, self.event_shards)
            on_events = f"[key {events}]" in str(result) or f"WRONGTYPE {events} " in str(result)
            key = events if on_events else self.keys.bars(feed)
            self._refused(None if on_events else feed, key, result, f"writing bar {bar.open_time_ms} to")
            if feed not in self.failed:  # not refused for good: an error that passes was raised above
                raise result
        for feed in put_back:  # carried (kept for the retry if anything above raised)
            self._restoring.pop(feed, None)
        self.counters.bars_written += count
        if self.announcer is not None:
            # Only bars this call wrote: one already there (a retried batch) was announced, or is
            # newer than its feed's mark and ``recover`` sends its event.
            landed = [i for i, result in enumerate(results) if result == 1]
            await self._announce([(written[i][0], written[i][1].open_time_ms, written[i][1].status.value, written[i][2])
                                  for i in landed], [carried[i] for i in landed])
        for feed, newest in lost.items():
            self._lost(feed, newest)
        return not lost

    async def _queue_bar(self, pipe: Any, feed: Feed, bar: Bar, rev: int, chain: dict[Feed, int], *,
                         carry: bool = False) -> dict[str, str] | None:
        """A bar's script call (revision ``rev`` of it when put back), queued on ``pipe``; ``chain``
        says which bar Redis must hold before it (lost_bars.py) and is moved on to this one.
        ``carry`` (a bar's first write): its event carries the bar's values, and the fields
        written are returned for the event a cluster sends once the bar is confirmed."""
        minid = bar.open_time_ms - (self.retention_bars - 1) * feed.interval_ms
        fields = bar.to_fields()
        if rev:
            fields["rev"] = str(rev)
        entry_id = revision_id(bar.open_time_ms, rev)
        expected = chain.get(feed, self._confirmed.get(feed, -1))
        chain[feed] = bar.open_time_ms
        self._last_written[feed] = bar.open_time_ms
        args: list[str | int]
        if self.announcer is None:
            event = event_fields(feed, bar.open_time_ms, bar.status.value, bar=fields if carry else None)
            args = [entry_id, minid, EVENTS_MAXLEN, expected, len(fields)]
            args += _pairs(fields, event)
            keys = [self.keys.bars(feed), self.keys.feed_events(feed, self.event_shards)]
        else:  # the bar alone; its event once Redis confirmed it
            args = [entry_id, minid, bar.open_time_ms - 1, expected]
            args += _pairs(fields)
            keys = [self.keys.bars(feed), self.keys.announced(feed)]
        if self.tokens is None:
            await self._write_bar(keys=keys, args=args, client=pipe)  # queued: the pipeline sends it
        else:
            keys.append(self.keys.fence(feed))
            args.append(self.tokens[feed])
            await self._write_bar_fenced(keys=keys, args=args, client=pipe)
        return fields if carry else None

    def _lost(self, feed: Feed, newest: int) -> None:
        """Redis holds less of ``feed`` than it confirmed (a failover): queue the bars kept to put
        back before its next bar, and count and log what cannot be."""
        confirmed = self._confirmed.get(feed, -1)
        back = [(bar, rev) for bar, rev in self.recent.after(feed, newest) if bar.open_time_ms <= confirmed]
        if newest >= 0:
            gone = (confirmed - newest) // feed.interval_ms
            beyond = max(0, gone - len(back))
        else:  # the whole stream is gone: how much was older than the window is unknown
            gone, beyond = len(back), 0
        self._restoring[feed] = (newest, back)
        self._last_written[feed] = newest
        # What the next bar's check expects once these are back (less than before if not all are).
        self._confirmed[feed] = back[-1][0].open_time_ms if back else newest
        log.warning("%s: Redis lost the newest %d bars it had confirmed (its newest is now %d, it held %d; a failover "
                    "that promoted a replica behind its master?): writing %d of them again from memory, with "
                    "their events, before the next bar", feed, gone, newest, confirmed, len(back))
        if beyond:
            self.counters.bars_not_restored += beyond
            self.not_restored[feed] = self.not_restored.get(feed, 0) + beyond
            log.error("%s: %d lost bars after %d are older than the %d this streamer keeps: they stay missing",
                      feed, beyond, newest, self.recent.size)

    async def _queue_revision(self, pipe: Any, feed: Feed, bar: Bar, rev: int) -> None:
        """A revision's script call, queued on ``pipe`` (bar_revisions.py)."""
        fields = {**bar.to_fields(), "rev": str(rev)}
        args: list[str | int] = [bar.open_time_ms, rev]
        keys = [self.keys.bars(feed)]
        if self.announcer is None:
            args += [EVENTS_MAXLEN, len(fields)]
            event = event_fields(feed, bar.open_time_ms, bar.status.value, rev)
            args += _pairs(fields, event)
            keys.append(self.keys.feed_events(feed, self.event_shards))
        else:
            args += _pairs(fields)
        if self.tokens is None:
            await self._amend_bar(keys=keys, args=args, client=pipe)
        else:
            await self._amend_bar_fenced(keys=[*keys, self.keys.fence(feed)], args=[*args, self.tokens[feed]],
                                         client=pipe)

    def _revision_written(self, feed: Feed, bar: Bar, rev: int, result: int) -> None:
        if result == 1:
            self.counters.bars_amended += 1
        elif result == -1:
            self.counters.amend_missing += 1
            log.warning("%s: revision %d of bar %d not written: the bar is not in Redis (trimmed, or never "
                        "written); it stays as it was", feed, rev, bar.open_time_ms)

    async def _announce(self, bars: list[tuple[Feed, int, str, int]],
                        carried: list[dict[str, str] | None] | None = None) -> None:
        assert self.announcer is not None
        # Shielded: a stop (the service cancelled) between the events and their marks left the
        # marks behind, and the shutdown's flush then re-sent those events (test_stream_replay on
        # the cluster saw the last 4 bars announced twice in about 1 run of 4). The step is two
        # round trips; a second cancel still ends the wait.
        announcing = asyncio.ensure_future(self.announcer.announce(bars, carried))
        try:
            try:
                await asyncio.shield(announcing)
            except asyncio.CancelledError:
                await announcing
                raise
        except ResponseError as exc:
            self._last_written.clear()  # their events are not all out: recover before going on
            key = str(exc).rpartition("[key ")[2].rstrip("]")
            raise key_problem(key, exc, "announcing a bar on") from None
        except BaseException:
            self._last_written.clear()
            raise

    async def _recover(self, feeds: list[Feed]) -> None:
        assert self.announcer is not None
        for feed in feeds:
            try:
                await self.announcer.recover(feed)
            except ResponseError as exc:
                key = str(exc).rpartition("[key ")[2].rstrip("]")
                own = key in (self.keys.bars(feed), self.keys.announced(feed))
                self._refused(feed if own else None, key, exc, "announcing bars of")

    # -- open bars and health -----------------------------------------------------------------

    async def write_status(
        self, open_bars: Iterable[tuple[Feed, Bar | None]], health: Iterable[tuple[Feed, FeedHealth]], ttl_ms: int
    ) -> None:
        """One round trip: every feed's forming bar and health hash (with its heartbeat TTL).

        A feed whose own hash Redis refuses for good is stopped (``on_feed_error``); an error that
        passes is left for the next round.
        """
        now = int(time.time() * 1000)
        pipe = self.redis.pipeline(transaction=False)
        targets: list[tuple[Feed, str]] = []
        tokens = self.tokens

        async def write(feed: Feed, key: str, fields: dict[str, str]) -> None:
            if tokens is None:
                pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
                pipe.pexpire(key, ttl_ms)
                targets.extend([(feed, key)] * 2)
                return
            args: list[str | int] = [ttl_ms, *_pairs(fields)]
            await self._fenced_hset(keys=[key, self.keys.fence(feed)], args=[*args, tokens[feed]], client=pipe)
            targets.append((feed, key))

        for feed, bar in open_bars:
            if bar is None or feed in self.failed or (tokens is not None and feed not in tokens):
                continue
            await write(feed, self.keys.open_bar(feed), {**bar.to_fields(), "updated_ms": str(now)})
        for feed, state in health:
            key = self.keys.health(feed)
            if feed in self.failed and self.failed[feed].key == key:
                continue  # the hash that would say so is the unusable key
            if tokens is not None and feed not in tokens:
                continue
            await write(feed, key, state.to_fields(now))
        if tokens is not None and targets and self.announcer is not None and not self._hset_loaded:
            await self.redis.script_load(FENCED_HSET)  # a cluster pipeline does not load scripts itself
            self._hset_loaded = True
        results = await pipe.execute(raise_on_error=False)
        for (feed, key), result in zip(targets, results, strict=True):
            if is_stale(result):
                self._stale(feed, cast(ResponseError, result))
                continue
            if isinstance(result, ResponseError) and feed not in self.failed:
                problem = key_problem(key, result, "writing")
                if isinstance(problem, RedisBusyError):
                    log.debug("status not written: %s", problem)
                else:
                    self._feed_failed(feed, problem)
