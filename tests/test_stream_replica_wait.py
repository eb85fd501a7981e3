"""``redis.wait_replicas``: the streamer sends WAIT after each batch of bars, before their events
(real ccxt client, the simulator, real Redis: the local cluster, whose masters each have a replica,
and the shared single Redis, which has none, so that every WAIT there times out)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest
from cluster import LocalCluster
from stream_harness import (
    StreamEntries,
    delete_prefix,
    redis_bars,
    same_bars,
    stream_settings,
    streamed_to_the_end,
    unique_prefix,
    write_windows,
)

from streamer.replica_wait import ReplicaWait, WaitCounters
from streamer.service import run
from streamer.simulator.server import ReplayServer
from streamer.simulator.tape import load_tape
from streamer.store import BarStore
from volcast.backoff import Backoff
from volcast.bar import Bar, BarStatus
from volcast.connections import redis_client
from volcast.keys import Feed, RedisKeys
from volcast.settings import RedisSettings

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLCAST_BINANCE_API_KEY", "simulator")


async def test_bars_are_written_and_announced_after_their_replicas_acknowledged(
    tmp_path: Path, redis_mode: str, redis_config: dict[str, Any]
) -> None:
    files = write_windows(tmp_path, 20)
    tapes = [load_tape(f) for f in files]
    prefix = unique_prefix()
    cluster = redis_mode == "cluster"
    shards = 3 if cluster else 1
    # On the cluster a WAIT is answered as soon as the master's replica acknowledged (loopback);
    # the single Redis has no replica, so each WAIT lasts its timeout: kept short.
    wait = {"wait_replicas": 1, "wait_timeout": "5s" if cluster else "20ms"}
    redis = redis_client(RedisSettings(**redis_config))
    keys = RedisKeys(prefix)
    try:
        async with ReplayServer(tapes, speed=10, start_on_subscribe=True) as server:
            settings = stream_settings(server, [t.symbol for t in tapes], prefix,
                                       redis={**redis_config, "event_shards": shards, **wait})
            streamer = asyncio.create_task(run(settings))
            expected = await streamed_to_the_end(redis, keys, server, tapes, files)
            streamer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await streamer
        events: dict[str, list[int]] = {}
        for stream in keys.event_streams(1000, shards):
            for _id, fields in cast(StreamEntries, await redis.xrange(stream)):
                events.setdefault(fields[b"symbol"].decode(), []).append(int(fields[b"open_time_ms"]))
        waits = timeouts = 0
        for feed, bars in expected.items():
            streamed = await redis_bars(redis, keys, feed)
            same_bars(streamed, bars, statuses=False)
            assert events[feed.symbol] == [b.open_time_ms for b in streamed], feed  # each bar announced once
            health = await redis.hgetall(keys.health(feed))
            assert health[b"state"] == b"stopped" and health[b"dropped_bars"] == b"0"
            waits, timeouts = int(health[b"replica_waits"]), int(health[b"replica_wait_timeouts"])
        assert waits > 0
        if cluster:
            assert timeouts == 0  # every master's replica acknowledged every batch
        else:
            # No replica: each batch unconfirmed and counted (WAIT sent at most every 5 s, each timing
            # out), and the feeds went on.
            assert timeouts >= waits
    finally:
        await delete_prefix(redis, prefix)
        await redis.aclose()


def _bar(open_time_ms: int) -> Bar:
    price, amount = Decimal("100.5"), Decimal("0.25")
    return Bar(open_time_ms, price, price, price, price, amount, price * amount, 1, amount, Decimal(0), price,
               open_time_ms, open_time_ms, BarStatus.COMPLETE)


async def test_a_replica_that_cannot_acknowledge_times_the_wait_out_and_the_event_still_goes(
    redis_cluster: LocalCluster,
) -> None:
    """The WAIT follows the bar writes on their own connection: with the feed's replica stopped
    (SIGSTOP) it cannot be acknowledged and times out (a WAIT on another connection, which has
    written nothing, would return at once with the replica counted); counted, and the bar is still
    announced."""
    settings = RedisSettings(url=redis_cluster.url, cluster=True, key_prefix=unique_prefix())
    keys = RedisKeys(settings.key_prefix)
    feed = Feed("binance", "BTC/USDT", 1000)
    redis = redis_client(settings)
    try:
        waits = ReplicaWait(redis, 1, 300)
        store = BarStore(redis, keys, retention_bars=1000, buffer_bars=100, backoff=Backoff(0.1, 1.0),
                         replica_wait=waits)
        t0 = 1_700_000_000_000
        store.put(feed, _bar(t0))
        await store.write_pending()
        assert waits.counters == WaitCounters(waits=1, timeouts=0)  # the replica acknowledged
        master = redis.get_node_from_key(keys.bars(feed))  # type: ignore[attr-defined]
        links = redis_cluster.cli(master.port, "info", "replication")
        replica = int(re.findall(r"slave0:ip=[^,]+,port=(\d+)", links)[0])
        pid = redis_cluster.processes[replica].pid
        os.kill(pid, signal.SIGSTOP)  # well within cluster-node-timeout (2 s): no failover
        try:
            store.put(feed, _bar(t0 + 1000))
            await store.write_pending()
        finally:
            os.kill(pid, signal.SIGCONT)
        assert waits.counters == WaitCounters(waits=2, timeouts=1)
        assert [int(i.split(b"-")[0]) for i, _ in cast(StreamEntries, await redis.xrange(keys.bars(feed)))] == [
            t0, t0 + 1000]
        events = [int(f[b"open_time_ms"])
                  for _, f in cast(StreamEntries, await redis.xrange(keys.feed_events(feed, 1)))]
        assert events == [t0, t0 + 1000]  # the feed went on: the timed-out batch was announced
    finally:
        await delete_prefix(redis, settings.key_prefix)
        await redis.aclose()


class _Pipe:
    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any) -> None:
        self.commands.append(args)


def test_a_master_that_came_short_is_asked_again_only_every_few_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each WAIT to a master without a replica holds its batch for the whole timeout: after one
    came short the next batches are counted unconfirmed without asking, for 5 s."""
    clock = [100.0]
    monkeypatch.setattr("streamer.replica_wait.time.monotonic", lambda: clock[0])
    waits = ReplicaWait(object(), 1, 50)  # type: ignore[arg-type]  # one node: no routing asked of the client
    pipe = _Pipe()
    assert waits.queue(pipe, ["k"]) == [""] and pipe.commands == [("WAIT", 1, 50)]
    waits.count([""], [0], ["k"])  # no replica acknowledged
    assert waits.counters == WaitCounters(waits=1, timeouts=1)
    clock[0] += 4.9
    assert waits.queue(pipe, ["k"]) == [] and len(pipe.commands) == 1  # not asked
    waits.count([], [], ["k"])
    assert waits.counters == WaitCounters(waits=1, timeouts=2)
    clock[0] += 0.2
    assert waits.queue(pipe, ["k"]) == [""]  # asked again
    waits.count([""], [1], ["k"])
    assert waits.counters == WaitCounters(waits=2, timeouts=2)
    assert waits.queue(pipe, ["k"]) == [""]  # answered: asked every batch again
