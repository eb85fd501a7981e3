"""Bars Redis lost behind a running streamer's back (streamer/lost_bars.py): put back, exact and
announced, before the feed's next bar.

A failover that promotes a replica behind its master loses the newest bars of a feed's stream (a
suffix: replication is in order) and, with them, the stream's last id. The first two tests make
that state on a real Redis (single node and the local cluster) while the store's writer runs:
the newest entries deleted and the stream's last id set back to the newest one left (what the
promoted replica holds), the feed's ``announced`` mark (cluster) set back too, and on one node the
bars' events with them (one node holds both). The writer sees no error at all, as when redis-py's
cluster client re-sends a write to the new master by itself. Then two real losses: one Redis
killed and restarted from a snapshot older than its last bars, and a real failover (a replica
cut off from its master: it cannot authenticate any more; bars written to the master; kill -9 of
the master; the replica promoted without them).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from cluster import LocalCluster
from failover_harness import master_of
from servers import HAS_REDIS, free_port, start_server, stop_server
from stream_harness import StreamEntries, unique_prefix

from streamer.lost_bars import RecentBars
from streamer.store import BarStore
from volcast.backoff import Backoff
from volcast.bar import Bar, BarStatus
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
            for name in ("bars", "announced"):
                await client.delete(getattr(keys, name)(FEED))


def _bar(second: int, volume: int = 1) -> Bar:
    price, amount = Decimal(100 + second), Decimal(volume)
    open_ms = T0 + SEC * second
    return Bar(open_time_ms=open_ms, open=price, high=price, low=price, close=price, volume=amount,
               quote_volume=price * amount, trades=volume, buy_volume=amount, sell_volume=Decimal(0), vwap=price,
               first_trade_id=open_ms, last_trade_id=open_ms + volume - 1, status=BarStatus.COMPLETE)


def _store(client: aioredis.Redis, keys: RedisKeys) -> BarStore:
    return BarStore(client, keys, retention_bars=1000, buffer_bars=1000, backoff=Backoff(0.01, 0.1))


async def _stream(client: aioredis.Redis, keys: RedisKeys) -> list[tuple[str, Bar, int]]:
    """(entry id, bar, rev field) of each entry of the feed's stream."""
    return [(entry_id.decode(), Bar.from_fields(fields), int(fields.get(b"rev", b"0")))
            for entry_id, fields in cast(StreamEntries, await client.xrange(keys.bars(FEED)))]


async def _events(client: aioredis.Redis, keys: RedisKeys, after: str = "-") -> list[tuple[int, int]]:
    """(open time in seconds from T0, rev) of each event after the entry id ``after``."""
    low = "-" if after == "-" else f"({after}"
    return [((int(f[b"open_time_ms"]) - T0) // SEC, int(f.get(b"rev", b"0")))
            for _, f in cast(StreamEntries, await client.xrange(keys.bar_events(SEC), min=low))]


async def _lose_after(client: aioredis.Redis, keys: RedisKeys, second: int, *, with_events: bool) -> None:
    """What a promoted replica that missed the bars after ``second`` holds: they are gone, and the
    stream's last id is that bar's (a replica never saw the later ids); on a cluster the feed's
    announced mark (same slot) is back at it too; ``with_events`` (one node): their events too."""
    bars = keys.bars(FEED)
    newest = f"{T0 + SEC * second}-0"
    gone = [entry_id for entry_id, _ in cast(StreamEntries, await client.xrange(bars, min=f"({newest}"))]
    assert gone, "nothing to lose"
    await client.xdel(bars, *gone)
    # redis-py leaves Redis.execute_command unannotated (XSETID has no method of its own)
    await client.execute_command("XSETID", bars, newest)  # type: ignore[no-untyped-call]
    if await client.exists(keys.announced(FEED)):
        await client.set(keys.announced(FEED), str(T0 + SEC * second))
    if with_events:
        events = keys.bar_events(SEC)
        entries = cast(StreamEntries, await client.xrange(events))
        kept = [entry_id for entry_id, f in entries if int(f[b"open_time_ms"]) <= T0 + SEC * second]
        await client.xdel(events, *[entry_id for entry_id, _ in entries if entry_id not in kept])
        await client.execute_command("XSETID", events, kept[-1])  # type: ignore[no-untyped-call]


async def test_the_newest_bars_lost_are_put_back_exact_and_announced_before_the_next_bar(
        redis: tuple[aioredis.Redis, RedisKeys], redis_mode: str, caplog: pytest.LogCaptureFixture) -> None:
    client, keys = redis
    store = _store(client, keys)
    writer = asyncio.create_task(store.run_writer())
    try:
        bars = [_bar(second) for second in range(6)]
        for bar in bars:
            store.put(FEED, bar)
        revised = _bar(4, 3)
        store.amend(FEED, revised, 1)  # a lost bar in its newest revision comes back as that revision
        await store.drained()
        before = await _stream(client, keys)
        assert [entry_id for entry_id, _, _ in before][-2:] == [f"{T0 + 4 * SEC}-1", f"{T0 + 5 * SEC}-0"]
        mark = cast(StreamEntries, await client.xrevrange(keys.bar_events(SEC), count=1))[0][0].decode()

        await _lose_after(client, keys, 2, with_events=redis_mode == "single")
        assert len(await _stream(client, keys)) == 3
        if redis_mode == "single":
            mark = cast(StreamEntries, await client.xrevrange(keys.bar_events(SEC), count=1))[0][0].decode()

        with caplog.at_level(logging.WARNING, logger="streamer.store"):
            store.put(FEED, _bar(6))
            await store.drained()
        assert not writer.done()
    finally:
        writer.cancel()
    after = await _stream(client, keys)
    assert after == [*before, (f"{T0 + 6 * SEC}-0", _bar(6), 0)]  # exact: the same entries, ids and fields
    assert after[4][1] == revised
    # Announced: each bar put back gets an event (as a bar, rev 0), in order, before the next bar's.
    assert await _events(client, keys, after=mark) == [(3, 0), (4, 0), (5, 0), (6, 0)]
    if redis_mode == "cluster":
        assert await client.get(keys.announced(FEED)) == str(T0 + 6 * SEC).encode()
    counters = store.counters
    assert (counters.bars_restored, counters.bars_not_restored, counters.bars_written) == (3, 0, 7)
    assert store.restored == {FEED: 3} and store.not_restored == {}
    assert counters.redis_errors == 0  # the writer saw no error: the bar script found the loss
    assert any("lost the newest 3 bars" in record.getMessage() for record in caplog.records), caplog.text


async def test_lost_bars_older_than_the_memory_kept_are_counted_missing(
        redis: tuple[aioredis.Redis, RedisKeys], redis_mode: str, caplog: pytest.LogCaptureFixture) -> None:
    client, keys = redis
    store = _store(client, keys)
    store.recent = RecentBars(size=2)
    for second in range(6):
        store.put(FEED, _bar(second))
    await store.write_pending()
    await _lose_after(client, keys, 1, with_events=redis_mode == "single")
    with caplog.at_level(logging.WARNING, logger="streamer.store"):
        store.put(FEED, _bar(6))
        await store.write_pending()
    # Bars 2 and 3 are gone for good (a hole, logged); 4 and 5 are back, then 6.
    assert [bar.open_time_ms for _, bar, _ in await _stream(client, keys)] == [T0 + SEC * s for s in (0, 1, 4, 5, 6)]
    assert (store.counters.bars_restored, store.counters.bars_not_restored) == (2, 2)
    assert store.not_restored == {FEED: 2}
    assert any(record.levelno == logging.ERROR and "stay missing" in record.getMessage()
               for record in caplog.records), caplog.text


def test_the_memory_of_bars_is_bounded_and_holds_each_bar_once_in_its_newest_revision() -> None:
    recent = RecentBars(size=3)
    for second in range(5):
        recent.note(FEED, _bar(second), 0)
    recent.note(FEED, _bar(3, 2), 1)
    recent.note(FEED, _bar(4), 0)  # a retried batch queues its bars again
    recent.note(FEED, _bar(3, 1), 0)  # an older revision never replaces a newer one
    assert recent.after(FEED, -1) == [(_bar(2), 0), (_bar(3, 2), 1), (_bar(4), 0)]
    assert recent.after(FEED, T0 + 3 * SEC) == [(_bar(4), 0)]
    recent.forget(FEED)
    assert recent.after(FEED, -1) == []


# -- a real loss: a Redis restarted from an older snapshot, a replica promoted behind its master --


async def test_a_redis_restarted_from_an_older_snapshot_gets_the_newer_bars_back(tmp_path: Path) -> None:
    """One node, no replica: Redis is killed after bars it acknowledged but never saved, and comes
    back from its last snapshot while the writer runs (it sees the outage and retries)."""
    if not HAS_REDIS:
        pytest.fail("redis-server is needed: apt-get install redis-server")
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
               "--save", "", "--appendonly", "no"]
    server = start_server(command, port)
    keys = RedisKeys(unique_prefix())
    client = aioredis.Redis(port=port)
    try:
        store = _store(client, keys)
        writer = asyncio.create_task(store.run_writer())
        try:
            for second in range(5):
                store.put(FEED, _bar(second))
            await store.drained()
            await client.save()  # the snapshot the restart comes back from: bars 0-4 and their events
            for second in range(5, 8):
                store.put(FEED, _bar(second))
            await store.drained()  # acknowledged, never saved
            server.send_signal(signal.SIGKILL)
            server.wait()
            store.put(FEED, _bar(8))
            deadline = time.monotonic() + 30
            while not store.counters.redis_errors:  # the writer meets the outage
                assert time.monotonic() < deadline, "the writer saw no outage"
                await asyncio.sleep(0.01)
            server = start_server(command, port)
            await asyncio.wait_for(store.drained(), timeout=60)
            assert not writer.done()
        finally:
            writer.cancel()
        assert await _stream(client, keys) == [(f"{T0 + SEC * s}-0", _bar(s), 0) for s in range(9)]
        assert await _events(client, keys) == [(s, 0) for s in range(9)]  # 0-4 from the snapshot, 5-7 sent again
        assert (store.counters.bars_restored, store.counters.bars_not_restored) == (3, 0)
    finally:
        await client.aclose()
        stop_server(server)


# -- a real failover --------------------------------------------------------------------------


def _replica_of(cluster: LocalCluster, master_port: int) -> int:
    nodes = [line.split() for line in cluster.cli(master_port, "cluster", "nodes").splitlines()]
    master_id = next(parts[0] for parts in nodes if "myself" in parts[2])
    return next(int(parts[1].split(":")[1].split("@")[0]) for parts in nodes if parts[3] == master_id)


def _offset(info: str, field: str) -> int:
    return next(int(line.split(":")[1]) for line in info.splitlines() if line.startswith(field + ":"))


async def _caught_up(cluster: LocalCluster, master: int, replica: int) -> None:
    """Wait until ``replica`` has every write ``master`` took: a replica still in its first sync when it is
    cut off would hold none of the bars, and the test counts the bars Redis lost."""
    deadline = time.monotonic() + 20
    while True:
        wanted = _offset(cluster.cli(master, "info", "replication"), "master_repl_offset")
        held = cluster.cli(replica, "info", "replication")
        if "master_link_status:up" in held and _offset(held, "slave_repl_offset") >= wanted:
            return
        assert time.monotonic() < deadline, "the replica does not catch up with its master"
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_a_replica_promoted_without_the_newest_bars_gets_them_back_from_the_running_writer(
        own_cluster: LocalCluster) -> None:
    cluster = own_cluster
    keys = RedisKeys(unique_prefix())
    async with redis_client(RedisSettings(url=cluster.url, cluster=True)) as client:
        store = _store(client, keys)
        writer = asyncio.create_task(store.run_writer())
        try:
            for second in range(5):
                store.put(FEED, _bar(second))
            await store.drained()
            master = master_of(cluster, keys.bars(FEED))
            replica = _replica_of(cluster, master)
            await _caught_up(cluster, master, replica)
            # Cut the replica off: it must authenticate as a user the master does not have, so its
            # link stays down and the next bars reach the master only.
            cluster.cli(replica, "config", "set", "masteruser", "nobody")
            cluster.cli(replica, "config", "set", "masterauth", "wrong")
            cluster.cli(master, "client", "kill", "type", "replica")
            deadline = time.monotonic() + 10
            while "master_link_status:up" in cluster.cli(replica, "info", "replication"):
                assert time.monotonic() < deadline, "the replica's link stays up"
                await asyncio.sleep(0.05)
            for second in range(5, 8):
                store.put(FEED, _bar(second))
            await store.drained()  # acknowledged by the master
            cluster.processes[master].send_signal(signal.SIGKILL)
            cluster.processes[master].wait()
            store.put(FEED, _bar(8))  # the writer retries until the replica serves the slot
            await asyncio.wait_for(store.drained(), timeout=60)
            assert master_of(cluster, keys.bars(FEED)) == replica
            assert not writer.done()
        finally:
            writer.cancel()
        assert await _stream(client, keys) == [(f"{T0 + SEC * s}-0", _bar(s), 0) for s in range(9)]
        events = await _events(client, keys)
        assert {second for second, _ in events} == set(range(9))
        assert await client.get(keys.announced(FEED)) == str(T0 + 8 * SEC).encode()
        assert store.counters.bars_restored == 3 and store.counters.bars_not_restored == 0
