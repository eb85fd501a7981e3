"""The feed-ownership loop (streamer/shards.py) round by round against real Redis: the fair share
of 4 feeds between two streamers, the takeover of a dead one's feeds, a paused one dropping the
feeds whose renewal is refused, and a clean stop's release. The feed runners are stand-ins that
wait to be cancelled (the real ones, on the simulator, are in test_stream_shards.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from stream_harness import delete_prefix, unique_prefix

from streamer.shards import FeedOwnership
from streamer.store import BarStore, ResumePoint
from volcast.backoff import Backoff
from volcast.connections import redis_client
from volcast.keys import Feed, RedisKeys
from volcast.settings import RedisSettings, Settings, settings_from_mapping

SYMBOLS = ["BTC/USDT", "ETH/USDT", "XRP/ETH", "SOL/USDT"]


class _Link:
    def __init__(self) -> None:
        self.runners: dict[str, Any] = {}
        self.exchange = object()  # no un_watch_trades: nothing to unsubscribe
        self.connections: dict[str, int] = {}  # no connection plan: each feed acquired on its own


class _Runner:
    """Stands in for a FeedRunner: streams until cancelled."""

    def __init__(self, feed: Feed, link: _Link, resume: ResumePoint | None) -> None:
        self.feed, self.link, self.resume = feed, link, resume

    async def run(self) -> None:
        await asyncio.Event().wait()

    def fail(self, reason: str) -> None:
        raise AssertionError(reason)


@pytest.fixture
async def redis(redis_config: dict[str, Any]) -> AsyncIterator[tuple[aioredis.Redis, RedisKeys]]:
    client = redis_client(RedisSettings(**redis_config))
    prefix = unique_prefix()
    try:
        yield client, RedisKeys(prefix)
    finally:
        await delete_prefix(client, prefix)
        await client.aclose()


def _settings(prefix: str, name: str) -> Settings:
    return settings_from_mapping({
        "exchanges": [{"id": "binance", "symbols": SYMBOLS}],
        "bars": {"interval": "1s", "grace": "200ms"},
        "streamer": {"leases": True, "name": name},
        "history": {"days": 0},
        "redis": {"key_prefix": prefix},
    }, env={})


def _ownership(client: aioredis.Redis, keys: RedisKeys, name: str) -> FeedOwnership:
    settings = _settings(keys.prefix, name)
    store = BarStore(client, keys, retention_bars=100, buffer_bars=100, backoff=Backoff(0.01, 0.1))
    link = _Link()
    feeds = {Feed("binance", s, 1000): link for s in SYMBOLS}
    return FeedOwnership(settings, client, keys, store, feeds, {}, 3_000, _Runner)  # type: ignore[arg-type]


async def _settled(*owners: FeedOwnership) -> None:
    """Until each feed task started has its runner (acquisition starts them as tasks)."""
    for _ in range(200):
        if all(set(o.runners) == set(o.held) for o in owners):
            return
        await asyncio.sleep(0.01)
    raise AssertionError({o.name: (list(o.runners), list(o.held)) for o in owners})


async def test_two_streamers_share_four_feeds_and_take_over_from_each_other(
    redis: tuple[aioredis.Redis, RedisKeys],
) -> None:
    client, keys = redis
    a, b = _ownership(client, keys, "a"), _ownership(client, keys, "b")
    async with asyncio.TaskGroup() as group:
        a._group = b._group = group
        try:
            await a.round()
            assert len(a.held) == 4  # alone: every feed
            await b.round()
            assert b.held == {}  # all held: b waits for a to give up its excess
            await a.round()
            assert len(a.held) == 2 and a.released == 2  # a counted b: its fair share is 2
            await b.round()
            await _settled(a, b)
            assert len(b.held) == 2 and set(a.held).isdisjoint(b.held)
            assert set(b.runners) == set(b.held) and set(a.runners) == set(a.held)

            # b stops answering (paused, or dead): its registration and leases lapse.
            b_feeds = list(b.held)
            await client.zrem(keys.streamers(), "b")
            for feed in b_feeds:
                await client.delete(keys.lease(feed))
            await a.round()
            await _settled(a)
            assert len(a.held) == 4 and all(a.held[f] == "3" for f in b_feeds)  # a 1, b 2, a again 3

            # b wakes up: its renewals carry stale tokens, refused; it drops those feeds.
            await b.round()
            assert b.held == {} and b.runners == {} and b.lost == 2
            assert b.store.counters.stale_writes == 2
            assert b.store.tokens == {}  # the store fences (and queues) nothing of them any more
            await a.round()
            await b.round()
            await _settled(a, b)
            assert len(a.held) == len(b.held) == 2  # shared again

            # A clean stop: every lease released at once, the registration gone.
            await b.release_all()
            for task in list(b._tasks.values()):
                task.cancel()
            await a.round()
            await _settled(a)
            assert len(a.held) == 4
            assert await client.zrange(keys.streamers(), 0, -1) == [b"a"]
        finally:
            for owner in (a, b):
                for task in owner._tasks.values():
                    task.cancel()
