"""Feed leases with fencing tokens: which of several `volcast stream` processes streams a feed.

A feed's lease (``keys.lease``, a hash with a TTL) names its owner and a fencing token; the token
comes from the feed's counter (``keys.fence``), incremented on every acquisition, so a later owner
always holds a larger token. Every write of a feed's data (bar + event, open bar, health) carries
the writer's token and is refused by Redis (an error reply starting ``STALE``) once the counter has
moved on: a streamer that was paused or cut off past its lease's TTL cannot write after another
took the feed, even though it still believes it owns it (a TTL alone cannot give that). Both keys
share the feed's hash tag, so every script here touches one slot (Redis Cluster).

Renewal goes through the same check: it succeeds while the counter still holds our token, even
after the lease key expired (nobody took the feed meanwhile, so nobody wrote), and is refused once
another streamer acquired it. Live streamers register in a sorted set (``keys.streamers``) scored
by when their registration lapses (Redis' clock, so hosts' clocks do not matter); each aims at
``ceil(feeds / live streamers)`` feeds.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from volcast.connections import is_cluster
from volcast.keys import Feed, RedisKeys
from volcast.redis_text import as_text, text_fields

STALE = "STALE"
"""The error code of a write refused for a stale token."""

# Prepended to a write script: its last KEY is the feed's fence counter, its last ARGV our token.
# Both are taken off before the script proper runs, so it reads its KEYS and ARGV unchanged.
FENCE_CHECK = """
local fence_key = table.remove(KEYS)
local fence_token = table.remove(ARGV)
if redis.call('GET', fence_key) ~= fence_token then
  return redis.error_reply('STALE token ' .. fence_token .. ' of ' .. fence_key ..
    ' is not the current one: the feed was taken over by another streamer')
end
"""

# A hash and its TTL, fenced. KEYS: the hash. ARGV: TTL ms, then field/value pairs.
FENCED_HSET = FENCE_CHECK + """
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS: lease, fence. ARGV: owner, TTL ms. Returns {1, token} or {0, owner holding it}.
_ACQUIRE = """
local holder = redis.call('HGET', KEYS[1], 'owner')
if holder and holder ~= ARGV[1] then return {0, holder} end
local token = redis.call('INCR', KEYS[2])
local now = redis.call('TIME')
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'token', token, 'since_ms', now[1] * 1000 + math.floor(now[2] / 1000))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, tostring(token)}
"""

# KEYS: lease, fence. ARGV: owner, token, TTL ms. 1: renewed; an error reply STALE: lost.
_RENEW = """
if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return redis.error_reply('STALE token ' .. ARGV[2] .. ' of ' .. KEYS[2] ..
    ' is not the current one: the feed was taken over by another streamer')
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'token', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS: lease, fence. ARGV: owner, token. 1: released; 0: it was not ours any more.
_RELEASE = """
if redis.call('GET', KEYS[2]) == ARGV[2] and redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: the registry, this streamer's hash. ARGV: name, TTL ms, then field/value pairs.
# Returns how many streamers are live (this one included).
_HEARTBEAT = """
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[1])
if #ARGV > 2 then redis.call('HSET', KEYS[2], unpack(ARGV, 3)) end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return redis.call('ZCARD', KEYS[1])
"""


def default_name() -> str:
    """Unique per process: a restarted streamer is a new owner (its old leases lapse or are taken)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"


def is_stale(error: BaseException) -> bool:
    return isinstance(error, ResponseError) and str(error).startswith(STALE + " ")


def fair_share(feeds: int, live: int) -> int:
    """The most feeds one of ``live`` streamers aims to hold."""
    return math.ceil(feeds / max(1, live))


@dataclass(frozen=True, slots=True)
class LeaseHolder:
    """Who holds a feed's lease (as ``volcast status`` shows it)."""

    owner: str
    token: int
    ttl_ms: int


class Leases:
    """One streamer's side of the leases: acquire, renew, release, and its registration."""

    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, name: str, ttl_ms: int) -> None:
        self.redis = redis
        self.keys = keys
        self.name = name
        self.ttl_ms = ttl_ms
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._renew_loaded = not is_cluster(redis)  # a cluster pipeline does not load scripts itself

    def _feed_keys(self, feed: Feed) -> list[str]:
        return [self.keys.lease(feed), self.keys.fence(feed)]

    async def acquire(self, feed: Feed) -> str | None:
        """Our new token for ``feed``, or None while another streamer holds it."""
        won, value = await self._acquire(keys=self._feed_keys(feed), args=[self.name, self.ttl_ms])
        return as_text(value) if int(won) == 1 else None

    async def renew(self, held: dict[Feed, str]) -> list[Feed]:
        """Renew every lease in ``held`` (one round trip); returns the feeds whose token was refused.

        An error other than a stale token (Redis busy, a key of another type) is raised: the lease
        is then neither confirmed nor lost, and fencing keeps the writes safe meanwhile.
        """
        if not held:
            return []
        if not self._renew_loaded:
            await self.redis.script_load(_RENEW)  # on every master
            self._renew_loaded = True
        pipe = self.redis.pipeline(transaction=False)
        feeds = list(held)
        for feed in feeds:
            await self._renew(keys=self._feed_keys(feed), args=[self.name, held[feed], self.ttl_ms], client=pipe)
        results = await pipe.execute(raise_on_error=False)
        lost = []
        for feed, result in zip(feeds, results, strict=True):
            if is_stale(result):
                lost.append(feed)
            elif isinstance(result, BaseException):
                raise result
        return lost

    async def release(self, feed: Feed, token: str) -> bool:
        """Give the feed up at once (another streamer may take it on its next round)."""
        return int(await self._release(keys=self._feed_keys(feed), args=[self.name, token])) == 1

    async def heartbeat(self, info: dict[str, str | int]) -> int:
        """Register as live for one TTL (with ``info`` in our hash); returns how many streamers are live."""
        args: list[str | int] = [self.name, self.ttl_ms]
        for name, value in info.items():
            args += [name, value]
        live = await self._heartbeat(keys=[self.keys.streamers(), self.keys.streamer(self.name)], args=args)
        return int(live)

    async def leave(self) -> None:
        """Unregister at a clean shutdown: the others count one streamer fewer at once."""
        await self.redis.zrem(self.keys.streamers(), self.name)
        await self.redis.delete(self.keys.streamer(self.name))


async def lease_holders(redis: aioredis.Redis, keys: RedisKeys, feeds: list[Feed]) -> dict[Feed, LeaseHolder]:
    """The current holder of each feed's lease (feeds nobody holds are left out)."""
    pipe = redis.pipeline(transaction=False)
    for feed in feeds:
        pipe.hgetall(keys.lease(feed))
        pipe.pttl(keys.lease(feed))
    results = await pipe.execute(raise_on_error=False)
    out: dict[Feed, LeaseHolder] = {}
    for index, feed in enumerate(feeds):
        fields, ttl = results[2 * index], results[2 * index + 1]
        if not isinstance(fields, dict) or not fields or isinstance(ttl, BaseException):
            continue
        decoded = text_fields(fields)
        try:
            out[feed] = LeaseHolder(decoded["owner"], int(decoded["token"]), int(ttl))
        except (KeyError, ValueError):
            continue
    return out


async def live_streamers(redis: aioredis.Redis, keys: RedisKeys) -> dict[str, dict[str, str]]:
    """Each registered streamer's hash (by name), for ``volcast status``; lapsed ones left out."""
    names = [as_text(n) for n in await redis.zrangebyscore(keys.streamers(), "(" + str(await _now_ms(redis)), "+inf")]
    out: dict[str, dict[str, str]] = {}
    for name in names:
        fields = await redis.hgetall(keys.streamer(name))
        out[name] = text_fields(fields)
    return out


async def _now_ms(redis: aioredis.Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000
