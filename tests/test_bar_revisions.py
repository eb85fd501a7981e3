"""Revisions of closed bars in Redis (streamer/bar_revisions.py), on the single node and the local
cluster: a bar amended after a late trade replaces its entry in place (id ``<open>-<rev>``), newer
bars after it stay, its event is sent again with ``rev`` (never moving a cluster feed's announced
mark), a retried revision is written once, a bar no longer in Redis is counted, a stale fencing
token is refused; and the readers (the store's resume point, the forecaster's bar reader, refit's
frames) still see one bar per open time, the newest revision."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from stream_harness import StreamEntries, unique_prefix

from forecaster.bar_reader import BarHistories
from forecaster.refit import read_frames
from streamer.leases import Leases
from streamer.store import BarStore
from volcast.backoff import Backoff
from volcast.bar import EVENT_BAR_FIELDS, Bar, BarStatus
from volcast.connections import redis_client
from volcast.keys import Feed, RedisKeys
from volcast.settings import RedisSettings

SEC = 1000
FEED = Feed("binance", "BTC/USDT", SEC)
T0 = 1_700_000_000_000


@pytest.fixture
async def redis(redis_config: dict[str, Any]) -> AsyncIterator[tuple[aioredis.Redis, RedisKeys]]:
    keys = RedisKeys(unique_prefix())
    async with redis_client(RedisSettings(**redis_config)) as client:
        try:
            yield client, keys
        finally:
            await client.delete(keys.bar_events(SEC))
            for name in ("bars", "announced", "lease", "fence"):
                await client.delete(getattr(keys, name)(FEED))


def _bar(second: int, volume: int = 1) -> Bar:
    price, amount = Decimal(100), Decimal(volume)
    open_ms = T0 + SEC * second
    return Bar(open_time_ms=open_ms, open=price, high=price, low=price, close=price, volume=amount,
               quote_volume=price * amount, trades=volume, buy_volume=amount, sell_volume=Decimal(0), vwap=price,
               first_trade_id=open_ms, last_trade_id=open_ms + volume - 1, status=BarStatus.COMPLETE)


def _store(client: aioredis.Redis, keys: RedisKeys) -> BarStore:
    return BarStore(client, keys, retention_bars=1000, buffer_bars=1000, backoff=Backoff(0.01, 0.1))


async def _ids(client: aioredis.Redis, keys: RedisKeys) -> list[str]:
    return [entry_id.decode() for entry_id, _ in cast(StreamEntries, await client.xrange(keys.bars(FEED)))]


async def _events(client: aioredis.Redis, keys: RedisKeys) -> list[tuple[int, int]]:
    """(open time in seconds from T0, rev) of each event."""
    return [((int(f[b"open_time_ms"]) - T0) // SEC, int(f.get(b"rev", b"0")))
            for _, f in cast(StreamEntries, await client.xrange(keys.bar_events(SEC)))]


async def test_a_revision_replaces_its_bar_in_place_and_is_announced_once(
        redis: tuple[aioredis.Redis, RedisKeys], redis_mode: str) -> None:
    client, keys = redis
    store = _store(client, keys)
    for second in range(4):
        store.put(FEED, _bar(second))
    store.amend(FEED, _bar(3, 2), 1)  # in the same batch as the bar itself: written after it
    await store.write_pending()
    store.amend(FEED, _bar(1, 3), 1)  # two newer bars after it
    await store.write_pending()
    assert await _ids(client, keys) == [f"{T0}-0", f"{T0 + SEC}-1", f"{T0 + 2 * SEC}-0", f"{T0 + 3 * SEC}-1"]
    bars = [Bar.from_fields(f) for _, f in cast(StreamEntries, await client.xrange(keys.bars(FEED)))]
    assert [b.volume for b in bars] == [1, 3, 1, 2]
    assert [f.get(b"rev") for _, f in cast(StreamEntries, await client.xrange(keys.bars(FEED)))] == [
        None, b"1", None, b"1"]
    assert await _events(client, keys) == [(0, 0), (1, 0), (2, 0), (3, 0), (3, 1), (1, 1)]
    if redis_mode == "cluster":  # a revision never moves the mark back
        assert await client.get(keys.announced(FEED)) == str(T0 + 3 * SEC).encode()
    store.amend(FEED, _bar(1, 3), 1)  # retried (a reply lost): already there
    store.amend(FEED, _bar(1, 4), 2)
    store.amend(FEED, _bar(-5), 1)  # not in Redis: nothing to amend
    store.put(FEED, _bar(4))
    await store.write_pending()
    assert await _ids(client, keys) == [f"{T0}-0", f"{T0 + SEC}-2", f"{T0 + 2 * SEC}-0", f"{T0 + 3 * SEC}-1",
                                        f"{T0 + 4 * SEC}-0"]
    assert await _events(client, keys) == [(0, 0), (1, 0), (2, 0), (3, 0), (3, 1), (1, 1), (1, 2), (4, 0)]
    assert (store.counters.bars_amended, store.counters.amend_missing, store.counters.bars_written) == (3, 1, 5)
    # The readers: one bar per open time, the newest revision.
    resume = await _store(client, keys).resume_point(FEED)
    assert resume is not None and resume.start_ms == T0 + 5 * SEC
    [(_, frame)] = await read_frames(client, keys, [FEED])
    assert list(frame.volume) == [1, 4, 1, 2, 1]
    reader = BarHistories(client, keys, SEC, look_back=3)
    held = await reader.at([FEED], T0 + 3 * SEC)
    assert held.last_volumes([FEED]) == [2.0]
    store.amend(FEED, _bar(3, 7), 2)  # the bar the reader holds is revised: read afresh, it is the new one
    await store.write_pending()
    reader.forget(FEED)
    assert (await reader.at([FEED], T0 + 3 * SEC)).last_volumes([FEED]) == [7.0]
    assert (await reader.at([FEED], T0 + 4 * SEC)).last_volumes([FEED]) == [1.0]  # the next bar after a revision


async def test_the_next_bar_is_read_after_a_revised_one(redis: tuple[aioredis.Redis, RedisKeys]) -> None:
    """The forecaster reads a feed's next bar with one XREAD after the bar it holds: after every
    revision of it, so a revision (<open>-1) is not taken for the next bar."""
    client, keys = redis
    store = _store(client, keys)
    for second in range(3):
        store.put(FEED, _bar(second))
    await store.write_pending()
    reader = BarHistories(client, keys, SEC, look_back=3)
    assert (await reader.at([FEED], T0 + 2 * SEC)).ready == [FEED]
    store.amend(FEED, _bar(2, 5), 1)
    store.put(FEED, _bar(3, 2))
    await store.write_pending()
    held = await reader.at([FEED], T0 + 3 * SEC)
    assert held.ready == [FEED] and held.last_volumes([FEED]) == [2.0]


async def test_a_revision_with_a_stale_token_is_refused(redis: tuple[aioredis.Redis, RedisKeys]) -> None:
    client, keys = redis
    a, b = Leases(client, keys, "a", 60_000), Leases(client, keys, "b", 60_000)
    old = await a.acquire(FEED)
    assert old is not None
    store = _store(client, keys)
    store.tokens = {FEED: old}
    store.put(FEED, _bar(0))
    store.amend(FEED, _bar(0, 2), 1)
    await store.write_pending()
    assert await _ids(client, keys) == [f"{T0}-1"]
    await client.delete(keys.lease(FEED))
    assert await b.acquire(FEED) is not None
    store.amend(FEED, dataclasses.replace(_bar(0, 3)), 2)
    await store.write_pending()
    assert store.counters.stale_writes == 1 and store.tokens == {}
    assert await _ids(client, keys) == [f"{T0}-1"]
    assert await _events(client, keys) == [(0, 0), (0, 1)]


async def test_a_bars_first_event_carries_its_values_as_written_and_a_revisions_none(
        redis: tuple[aioredis.Redis, RedisKeys]) -> None:
    client, keys = redis
    store = _store(client, keys)
    for second in range(3):
        store.put(FEED, _bar(second, volume=second + 1))
    await store.write_pending()
    store.amend(FEED, _bar(1, 5), 1)
    await store.write_pending()
    bars = {int(i.split(b"-")[0]): f for i, f in cast(StreamEntries, await client.xrange(keys.bars(FEED)))}
    events = [f for _, f in cast(StreamEntries, await client.xrange(keys.bar_events(SEC)))]
    assert len(events) == 4
    def carried(event: dict[bytes, bytes]) -> dict[str, str]:
        return {n: event[n.encode()].decode() for n in EVENT_BAR_FIELDS}

    def values(fields: dict[str, str]) -> dict[str, str]:
        return {n: fields[n] for n in EVENT_BAR_FIELDS}

    # The very strings of the bar as it was written (one source of truth): bars 0 and 2 as they
    # are in Redis, bar 1 as it was first written (its revision followed, with an event of its own).
    assert carried(events[0]) == values({k.decode(): v.decode() for k, v in bars[T0].items()})
    assert carried(events[2]) == values({k.decode(): v.decode() for k, v in bars[T0 + 2 * SEC].items()})
    assert carried(events[1]) == values(_bar(1, volume=2).to_fields())
    assert [events[i][b"volume"] for i in range(3)] == [b"1", b"2", b"3"]
    assert events[3][b"rev"] == b"1" and not any(n.encode() in events[3] for n in EVENT_BAR_FIELDS)
