"""Bar-closed events on a Redis Cluster, where a bar and its event live in different hash slots.

On one Redis node a bar and its event are written by one script, both or neither (store.py). On a
cluster one script cannot touch both: the feed's keys share the feed's hash tag, and its event
stream (one of ``redis.event_shards``) has a tag of its own. So the streamer writes in order:

1. the bar, by the bar script, which also creates the feed's ``announced`` key (in the feed's
   slot) if it is missing, saying "every bar before this one is announced";
2. once Redis confirmed the bars, their events (XADD to the feed's shard): a forecaster reading
   an event always finds its bar, as on one node;
3. then ``announced`` := the newest bar whose event is written.

A stop or an outage between 1 and 3 leaves bars newer than ``announced``: before the streamer
next writes a feed (a start, or after an outage) it re-sends their events (``recover``), so no
bar's event is lost. A stop between 2 and 3 sends an event twice: the forecaster makes one
forecast per bar (a repeated event is acknowledged and counted as ``duplicate_events``), or
after its own restart the same forecast again.

The event of a bar's first write carries the bar's values (``EVENT_BAR_FIELDS``, the very strings
written to the bar), so that a forecaster need not read back each bar it is told about (on a
cluster a command per feed, and a round trip to every master, by every worker at every boundary).
A revision's event, a restored bar's (lost_bars.py) and one ``recover`` sends carry none: the
forecaster then reads the bar, as it does an older streamer's events. On one node the same event
is written by the bar's script (store.py).

A revision of a bar already announced (bar_revisions.py) is written alone, then its event (with
``rev``) is sent; it never moves the mark. A stop between the two loses that event (the bar in
Redis is the revision all the same; only its re-forecast is not made): not recovered, since the
mark cannot say which revisions were announced.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from streamer.lost_bars import CHECK_NEWEST
from volcast.bar import EVENT_BAR_FIELDS
from volcast.keys import Feed, RedisKeys
from volcast.redis_text import as_text

log = logging.getLogger(__name__)
_T = TypeVar("_T")

EVENTS_MAXLEN = 100_000
_RECOVER_PAGE = 10_000

# One bar alone, for a cluster. KEYS: the feed's bar stream, its announced key. ARGV: entry id,
# MINID, the announced mark to create if missing, the newest bar the stream must hold
# (streamer/lost_bars.py; -1: no check), then the bar's field/value pairs. Returns 1 (written), 0
# (already there) or ["lost", newest] (lost_bars.py); an error reply names the key.
WRITE_BAR_ALONE = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'stream' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' holds a ' .. kind .. ', not a stream')
end
""" + CHECK_NEWEST + """
local added = redis.pcall('XADD', KEYS[1], 'MINID', '~', ARGV[2], ARGV[1], unpack(ARGV, 5))
if type(added) == 'table' and added.err then
  if string.find(added.err, 'equal or smaller', 1, true) then return 0 end
  return redis.error_reply(added.err .. ' [key ' .. KEYS[1] .. ']')
end
redis.call('SET', KEYS[2], ARGV[3], 'NX')
return 1
"""


def event_fields(feed: Feed, open_time_ms: int, status: str, rev: int = 0,
                 bar: Mapping[str, str] | None = None) -> dict[str, str]:
    """A bar-closed event; ``rev`` (only above 0) says it is a revision of a bar already announced
    (streamer/bar_revisions.py): the same bar, rewritten after a late trade. ``bar``: the fields
    just written to the bar (``Bar.to_fields``), whose values (``EVENT_BAR_FIELDS``) the event
    carries; only for a bar's first write, never with ``rev``."""
    fields = {"exchange": feed.exchange, "symbol": feed.symbol, "interval": feed.interval,
              "open_time_ms": str(open_time_ms), "status": status}
    if rev:
        fields["rev"] = str(rev)
    elif bar is not None:
        for name in EVENT_BAR_FIELDS:
            fields[name] = bar[name]
    return fields


class Announcer:
    """Steps 2 and 3 above, and the recovery of events a stop left unsent."""

    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, shards: int) -> None:
        self.redis = redis
        self.keys = keys
        self.shards = shards
        self.resent = 0  # events sent again by ``recover``

    async def announce(self, bars: Sequence[tuple[Feed, int, str, int]],
                       carried: Sequence[Mapping[str, str] | None] | None = None) -> None:
        """Events of bars Redis has confirmed (feed, open time, status, rev), in order; then the
        marks. A revision (rev above 0) never moves a mark: its bar was announced before.
        ``carried``: per bar, the fields this streamer just wrote to it (its first write), whose
        values the event carries (``event_fields``), or None.

        A refused event raises the ResponseError with the stream's key in its text (the caller
        turns it into a KeyProblem); an outage raises and the caller's retry recovers.
        """
        if not bars:
            return
        pipe = self.redis.pipeline(transaction=False)
        for (feed, open_ms, status, rev), bar in zip(bars, carried or [None] * len(bars), strict=True):
            pipe.xadd(self.keys.feed_events(feed, self.shards), event_fields(feed, open_ms, status, rev, bar),  # type: ignore[arg-type]
                      maxlen=EVENTS_MAXLEN, approximate=True)
        results = await pipe.execute(raise_on_error=False)
        for (feed, _, _, _), result in zip(bars, results, strict=True):
            if isinstance(result, ResponseError):
                raise type(result)(f"{result} [key {self.keys.feed_events(feed, self.shards)}]")
            if isinstance(result, Exception):
                # A node's connection error comes back as the command's reply on a cluster
                # pipeline: the event is not sent, so no mark may move past it; the caller retries.
                raise result
        newest: dict[Feed, int] = {}
        for feed, open_ms, _, rev in bars:
            if not rev:
                newest[feed] = max(open_ms, newest.get(feed, open_ms))
        if not newest:
            return
        marks = self.redis.pipeline(transaction=False)
        for feed, open_ms in newest.items():
            marks.set(self.keys.announced(feed), str(open_ms))
        await marks.execute()

    async def recover(self, feed: Feed) -> None:
        """Send the events of the feed's bars written after its announced mark (a stop between
        writing bars and sending their events). A refusal names the key (``[key ...]``)."""
        mark: Any = await _named(self.keys.announced(feed), self.redis.get(self.keys.announced(feed)))
        if mark is None:
            return  # no live bar written yet: history bars have no events
        after = int(as_text(mark))
        bars = self.keys.bars(feed)
        while True:
            # After every revision of bar ``after`` (ids ``after-<rev>``, bar_revisions.py).
            entries: Any = await _named(bars, self.redis.xrange(bars, min=str(after + 1), count=_RECOVER_PAGE))
            if not entries:
                return
            # A bar amended before its event was sent is announced once, as its revision: rev 0
            # so that it moves the mark (the forecaster reads the bar's newest revision either way).
            missing = [(feed, int(as_text(entry_id).split("-", 1)[0]), as_text(fields.get(b"status", b"")), 0)
                       for entry_id, fields in entries]
            log.warning("%s: %d closed bars had no event yet (the streamer stopped in between); sending them now",
                        feed, len(missing))
            await self.announce(missing)
            self.resent += len(missing)
            after = missing[-1][1]


async def _named(key: str, call: Awaitable[_T]) -> _T:
    """A read of ``key``; a refusal says which key."""
    try:
        return await call
    except ResponseError as exc:
        raise type(exc)(f"{exc} [key {key}]") from None
