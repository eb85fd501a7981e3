"""Feed leases and fencing against real Redis (the single node and the local cluster): one owner at
a time, tokens that only grow, and writes with a stale token refused by the store's scripts (bar +
event, open bar, health), counted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from stream_harness import StreamEntries, unique_prefix

from streamer.health import FeedHealth
from streamer.leases import Leases, fair_share, lease_holders, live_streamers
from streamer.store import BarStore
from volcast.backoff import Backoff
from volcast.bar import Bar, BarStatus
from volcast.connections import redis_client
from volcast.keys import Feed, RedisKeys
from volcast.settings import RedisSettings

FEED = Feed("binance", "BTC/USDT", 1000)
OTHER = Feed("binance", "ETH/USDT", 1000)


@pytest.fixture
async def redis(redis_config: dict[str, Any]) -> AsyncIterator[tuple[aioredis.Redis, RedisKeys]]:
    """A client of the single Redis or of the local cluster (each test runs on both)."""
    keys = RedisKeys(unique_prefix())
    async with redis_client(RedisSettings(**redis_config)) as client:
        try:
            yield client, keys
        finally:
            for key in [keys.streamers(), *(keys.streamer(n) for n in "ab"), keys.bar_events(1000)]:
                await client.delete(key)
            for feed in (FEED, OTHER):
                for name in ("bars", "open_bar", "health", "lease", "fence", "announced"):
                    await client.delete(getattr(keys, name)(feed))


async def _lapse(client: aioredis.Redis, key: str) -> None:
    """The lease lapses now, as at the end of its TTL (the key is gone; the test waits for no TTL)."""
    await client.delete(key)


T0 = 1_700_000_000_000


def _bar(second: int) -> Bar:
    open_time_ms = T0 + 1000 * second
    price = Decimal("100")
    one = Decimal("1")
    return Bar(open_time_ms=open_time_ms, open=price, high=price, low=price, close=price, volume=one,
               quote_volume=price, trades=1, buy_volume=one, sell_volume=Decimal("0"), vwap=price,
               first_trade_id=open_time_ms, last_trade_id=open_time_ms, status=BarStatus.COMPLETE)


def _id(second: int) -> bytes:
    return f"{T0 + 1000 * second}-0".encode()


def _store(client: aioredis.Redis, keys: RedisKeys, tokens: dict[Feed, str]) -> BarStore:
    store = BarStore(client, keys, retention_bars=1000, buffer_bars=1000, backoff=Backoff(0.01, 0.1))
    store.tokens = tokens
    return store


async def test_one_owner_at_a_time_and_tokens_only_grow(redis: tuple[aioredis.Redis, RedisKeys]) -> None:
    client, keys = redis
    a, b = Leases(client, keys, "a", 60_000), Leases(client, keys, "b", 60_000)
    first = await a.acquire(FEED)
    assert first == "1"
    assert await b.acquire(FEED) is None  # held by a
    assert await a.renew({FEED: first}) == []
    await _lapse(client, keys.lease(FEED))
    second = await b.acquire(FEED)
    assert second == "2"
    assert await a.renew({FEED: first}) == [FEED]  # a's token is stale: refused, not renewed
    assert not await a.release(FEED, first)  # nor may a stale owner release b's lease
    holders = await lease_holders(client, keys, [FEED, OTHER])
    assert list(holders) == [FEED]
    assert (holders[FEED].owner, holders[FEED].token) == ("b", 2)
    assert 0 < holders[FEED].ttl_ms <= 60_000
    assert await b.release(FEED, second)
    assert not await client.exists(keys.lease(FEED))
    assert await a.acquire(FEED) == "3"  # the counter outlives the lease


async def test_a_lapsed_lease_nobody_took_is_renewed_with_the_same_token(
    redis: tuple[aioredis.Redis, RedisKeys],
) -> None:
    client, keys = redis
    a = Leases(client, keys, "a", 60_000)
    token = await a.acquire(FEED)
    assert token is not None
    await _lapse(client, keys.lease(FEED))
    assert await a.renew({FEED: token}) == []
    holders = await lease_holders(client, keys, [FEED])
    assert (holders[FEED].owner, holders[FEED].token) == ("a", int(token))


async def test_live_streamers_and_fair_share(redis: tuple[aioredis.Redis, RedisKeys]) -> None:
    client, keys = redis
    a, b = Leases(client, keys, "a", 60_000), Leases(client, keys, "b", 60_000)
    assert await a.heartbeat({"feeds": 0}) == 1
    assert await b.heartbeat({"feeds": 3}) == 2
    assert (await live_streamers(client, keys))["b"]["feeds"] == "3"
    assert [fair_share(4, n) for n in (1, 2, 3, 4, 5)] == [4, 2, 2, 1, 1]
    await b.leave()
    assert await a.heartbeat({"feeds": 0}) == 1
    assert list(await live_streamers(client, keys)) == ["a"]
    await client.zadd(keys.streamers(), {"gone": 1})  # lapsed long ago (Redis' clock)
    assert list(await live_streamers(client, keys)) == ["a"]
    assert await a.heartbeat({}) == 1  # and dropped from the count


async def test_a_bar_write_with_a_stale_token_is_refused_and_counted(
    redis: tuple[aioredis.Redis, RedisKeys],
) -> None:
    client, keys = redis
    a, b = Leases(client, keys, "a", 60_000), Leases(client, keys, "b", 60_000)
    old = await a.acquire(FEED)
    other = await a.acquire(OTHER)
    assert old is not None and other is not None
    stale_store = _store(client, keys, {FEED: old, OTHER: other})
    lost: list[Feed] = []
    stale_store.on_stale = lost.append
    stale_store.put(FEED, _bar(1))
    await stale_store.write_pending()
    assert stale_store.counters.stale_writes == 0
    await _lapse(client, keys.lease(FEED))
    new = await b.acquire(FEED)
    assert new is not None
    for store_bar in (_bar(2), _bar(3)):
        stale_store.put(FEED, store_bar)
    stale_store.put(OTHER, _bar(2))
    await stale_store.write_pending()
    assert stale_store.counters.stale_writes == 2  # both of the batch's bars for FEED
    assert lost == [FEED]  # told once
    assert stale_store.tokens == {OTHER: other}
    stale_store.put(FEED, _bar(4))  # no longer ours: not even queued
    assert stale_store.pending == 0
    bars = cast(StreamEntries, await client.xrange(keys.bars(FEED)))
    assert [e[0] for e in bars] == [_id(1)]
    events = cast(StreamEntries, await client.xrange(keys.bar_events(1000)))
    assert [(e[1][b"symbol"], e[1][b"open_time_ms"]) for e in events] == [
        (b"BTC/USDT", _id(1)[:-2]), (b"ETH/USDT", _id(2)[:-2]),  # no event for a refused bar
    ]
    assert [e[0] for e in cast(StreamEntries, await client.xrange(keys.bars(OTHER)))] == [_id(2)]
    new_store = _store(client, keys, {FEED: new})
    new_store.put(FEED, _bar(2))
    await new_store.write_pending()
    assert [e[0] for e in cast(StreamEntries, await client.xrange(keys.bars(FEED)))] == [_id(1), _id(2)]
    assert new_store.counters.stale_writes == 0


async def test_open_bar_and_health_writes_with_a_stale_token_are_refused(
    redis: tuple[aioredis.Redis, RedisKeys],
) -> None:
    client, keys = redis
    a, b = Leases(client, keys, "a", 60_000), Leases(client, keys, "b", 60_000)
    old = await a.acquire(FEED)
    assert old is not None
    stale_store = _store(client, keys, {FEED: old})
    health = FeedHealth()
    await stale_store.write_status([(FEED, _bar(5))], [(FEED, health)], 60_000)
    assert await client.hget(keys.open_bar(FEED), "open_time_ms") == _id(5)[:-2]
    assert 0 < await client.pttl(keys.health(FEED)) <= 60_000
    await _lapse(client, keys.lease(FEED))
    new = await b.acquire(FEED)
    assert new is not None
    await _store(client, keys, {FEED: new}).write_status([(FEED, _bar(7))], [], 60_000)
    lost: list[Feed] = []
    stale_store.on_stale = lost.append
    health.trades = 99
    await stale_store.write_status([(FEED, _bar(6))], [(FEED, health)], 60_000)
    assert stale_store.counters.stale_writes == 2  # the open bar and the health hash
    assert lost == [FEED]
    assert await client.hget(keys.open_bar(FEED), "open_time_ms") == _id(7)[:-2]
    assert await client.hget(keys.health(FEED), "trades") == b"0"
