"""The Redis Cluster deployment: settings, the cluster client from volcast.connections, and the
key layout (every multi-key write one slot) against a real local cluster (tests/cluster.py)."""

from __future__ import annotations

import argparse
import asyncio
import uuid
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import redis.asyncio as aioredis
from cluster import LocalCluster
from stream_harness import StreamEntries
from worker_harness import MINUTE, symbol_bars

import forecaster.recorder as recorder_module
from streamer.health import FeedHealth, FeedState
from streamer.store import BarStore, KeyProblem
from volcast.backoff import Backoff
from volcast.commands import status
from volcast.connections import ConnectionProblem, check_redis, is_cluster, redis_client
from volcast.keys import Feed, RedisKeys, event_shard, slot_tag
from volcast.settings import ConfigError, RedisSettings, settings_from_mapping


async def test_cluster_client_routes_keys_of_every_slot(redis_cluster: LocalCluster) -> None:
    settings = RedisSettings(url=redis_cluster.url, cluster=True)
    await check_redis(settings)
    prefix = f"test-cl-{uuid.uuid4().hex[:8]}"
    async with redis_client(settings) as redis:
        assert is_cluster(redis)
        keys = RedisKeys(prefix)
        feeds = [Feed("binance", f"S{i}/USDT", 60_000) for i in range(12)]
        for feed in feeds:
            await redis.set(keys.announced(feed), "1")
        owners = {int(await redis.cluster_keyslot(keys.announced(f))) for f in feeds}  # type: ignore[attr-defined]
        assert len(owners) > 1
        assert all([v == b"1" for v in [await redis.get(keys.announced(f)) for f in feeds]])
        await redis.delete(*[keys.announced(f) for f in feeds])


async def test_single_node_settings_on_a_cluster_node_say_what_to_set(redis_cluster: LocalCluster) -> None:
    with pytest.raises(ConnectionProblem, match=r"redis\.cluster to true"):
        await check_redis(RedisSettings(url=redis_cluster.url))


async def test_cluster_settings_on_a_single_node_say_what_to_set() -> None:
    with pytest.raises(ConnectionProblem, match=r"not a Redis Cluster.*redis\.cluster to false"):
        await check_redis(RedisSettings(url="redis://127.0.0.1:6379", cluster=True))


def test_cluster_settings_are_checked() -> None:
    base = {"exchanges": [{"id": "binance", "symbols": ["BTC/USDT"]}]}
    ok = settings_from_mapping({**base, "redis": {"url": "redis://h:7000", "cluster": True,
                                                  "cluster_nodes": ["h2:7001"], "event_shards": 4}}, env={})
    assert ok.redis.cluster and ok.redis.event_shards == 4
    env = settings_from_mapping(base, env={"VOLCAST_REDIS_CLUSTER": "true", "VOLCAST_REDIS_URL": "redis://h:7000"})
    assert env.redis.cluster
    for redis, message in [
        ({"url": "unix:///tmp/r.sock", "cluster": True}, "unix socket"),
        ({"url": "redis://h:7000/3", "cluster": True}, "only database 0"),
        ({"cluster_nodes": ["h2:7001"]}, "cluster is false"),
        ({"url": "redis://h:7000", "cluster": True, "cluster_nodes": ["h2"]}, "not host:port"),
        ({"event_shards": 0}, "event_shards"),
    ]:
        with pytest.raises(ConfigError, match=message):
            settings_from_mapping({**base, "redis": redis}, env={})


def test_one_event_shard_keeps_the_old_key_and_shards_have_their_own_slots() -> None:
    keys = RedisKeys("p")
    assert keys.bar_events(60_000) == "p:events:bars:1m"
    assert keys.dead_events(60_000) == "p:events:bars:1m:dead"
    streams = keys.event_streams(60_000, 4)
    assert len({slot_tag(s) for s in streams}) == 4
    for k, stream in enumerate(streams):
        assert slot_tag(keys.dead_events(60_000, k, 4)) == slot_tag(stream)
    feeds = [Feed("binance", f"S{i}/USDT", 60_000) for i in range(200)]
    spread = [event_shard(f, 4) for f in feeds]
    assert set(spread) == {0, 1, 2, 3} and min(spread.count(k) for k in range(4)) > 25
    assert event_shard(feeds[7], 4) == event_shard(Feed("binance", "S7/USDT", 60_000), 4)  # stable
    assert keys.feed_events(feeds[0], 1) == "p:events:bars:1m"
    assert slot_tag(keys.bars(feeds[0])) == slot_tag(keys.announced(feeds[0])) == "binance:S0/USDT:1m"


async def test_bars_a_stop_left_without_their_event_get_it_before_the_next_bar(redis_cluster: LocalCluster) -> None:
    """On a cluster a bar and its event are two writes (streamer/announce.py): bars written by a
    streamer that stopped before their events get them from the next one, once."""
    settings = RedisSettings(url=redis_cluster.url, cluster=True, event_shards=2)
    keys = RedisKeys(f"test-cl-{uuid.uuid4().hex[:8]}")
    feed = Feed("binance", "NEAR/USDT", MINUTE)
    bars = symbol_bars(0)[:6]

    def store(redis: aioredis.Redis) -> BarStore:
        return BarStore(redis, keys, retention_bars=1000, buffer_bars=100, backoff=Backoff(0.01, 0.1),
                        event_shards=2)

    def announced(events: StreamEntries) -> list[int]:
        return [int(fields[b"open_time_ms"]) for _, fields in events]

    async with redis_client(settings) as redis:
        first = store(redis)
        for bar in bars[:2]:
            first.put(feed, bar)
        await first.write_pending()
        for bar in bars[2:4]:  # written, and the streamer stopped before their events
            await redis.xadd(keys.bars(feed), bar.to_fields(), id=f"{bar.open_time_ms}-0")  # type: ignore[arg-type]
        second = store(redis)
        second.put(feed, bars[4])
        await second.write_pending()
        events = cast(StreamEntries, await redis.xrange(keys.feed_events(feed, 2)))
        assert announced(events) == [b.open_time_ms for b in bars[:5]]
        assert second.announcer is not None and second.announcer.resent == 2
        third = store(redis)
        third.put(feed, bars[5])
        await third.write_pending()
        assert third.announcer is not None and third.announcer.resent == 0
        assert announced(cast(StreamEntries, await redis.xrange(keys.feed_events(feed, 2)))) == [
            b.open_time_ms for b in bars]
        assert await redis.xlen(keys.bar_events(MINUTE, 1 - event_shard(feed, 2), 2)) == 0
        await redis.delete(keys.bars(feed), keys.announced(feed), *keys.event_streams(MINUTE, 2))


def test_status_reads_a_cluster(redis_cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``volcast status`` (and its redis check) on a cluster: the bars and health the streamer wrote."""
    for name in ("VOLCAST_REDIS_URL", "VOLCAST_REDIS_PASSWORD", "VOLCAST_REDIS_USERNAME", "VOLCAST_REDIS_CLUSTER"):
        monkeypatch.delenv(name, raising=False)
    prefix = f"test-cl-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "config.yml"
    config.write_text("exchanges: [{id: binance, symbols: [NEAR/USDT, ALGO/USDT]}]\nbars: {interval: 1m}\n"
                      f"redis: {{url: '{redis_cluster.url}', cluster: true, key_prefix: '{prefix}'}}\n",
                      encoding="utf-8")
    settings = RedisSettings(url=redis_cluster.url, cluster=True, key_prefix=prefix)
    keys = RedisKeys(prefix)
    near = Feed("binance", "NEAR/USDT", MINUTE)
    bars = symbol_bars(0)[:5]

    async def populate() -> None:
        async with redis_client(settings) as redis:
            store = BarStore(redis, keys, retention_bars=1000, buffer_bars=100, backoff=Backoff(0.01, 0.1))
            for bar in bars:
                store.put(near, bar)
            await store.write_pending()
            await store.write_status([], [(near, FeedHealth(state=FeedState.LIVE, trades=42))], 60_000)

    asyncio.run(populate())
    parser = argparse.ArgumentParser()
    status.add_arguments(parser)
    assert status.main(parser.parse_args(["--config", str(config), "--json"])) == 0
    report = orjson.loads(capsys.readouterr().out)
    first, second = report["feeds"]
    assert first["symbol"] == "NEAR/USDT" and first["state"] == "live" and first["trades"] == 42
    assert first["bars"]["count"] == 5 and first["bars"]["last_open_ms"] == bars[-1].open_time_ms
    assert second["symbol"] == "ALGO/USDT" and second["bars"]["count"] is None  # no bars yet
    assert status.main(parser.parse_args(["--config", str(config), "--check", "redis"])) == 0

    async def clean() -> None:
        async with redis_client(settings) as redis:
            await redis.delete(*[k async for k in redis.scan_iter(match=f"{prefix}:*")])

    asyncio.run(clean())


async def test_an_events_shard_refused_stops_the_writer_and_no_bar_stays_unannounced(
        redis_cluster: LocalCluster) -> None:
    """On one node a bar whose event cannot be written is not written either. On a cluster the bar
    is in by then: the writer stops with the key named, and once the key is fixed the next
    streamer sends the events of every bar it finds unannounced."""
    settings = RedisSettings(url=redis_cluster.url, cluster=True, event_shards=2)
    keys = RedisKeys(f"test-cl-{uuid.uuid4().hex[:8]}")
    feed = Feed("binance", "NEAR/USDT", MINUTE)
    bars = symbol_bars(0)[:6]
    events = keys.feed_events(feed, 2)

    def store(redis: aioredis.Redis) -> BarStore:
        return BarStore(redis, keys, retention_bars=1000, buffer_bars=100, backoff=Backoff(0.01, 0.1),
                        event_shards=2)

    async with redis_client(settings) as redis:
        first = store(redis)
        for bar in bars[:2]:
            first.put(feed, bar)
        await first.write_pending()
        await redis.delete(events)
        await redis.set(events, "x")  # something else took the key
        for bar in bars[2:4]:
            first.put(feed, bar)
        with pytest.raises(KeyProblem) as refused:
            await first.write_pending()
        assert events in str(refused.value) and "DEL it" in str(refused.value)
        assert await redis.xlen(keys.bars(feed)) == 4  # the bars are in, their events are not
        await redis.delete(events)  # what the message says to do
        second = store(redis)
        second.put(feed, bars[4])
        await second.write_pending()
        announced = [int(fields[b"open_time_ms"]) for _, fields in cast(StreamEntries, await redis.xrange(events))]
        assert announced == [b.open_time_ms for b in bars[2:5]]  # the first two went with the old key
        await redis.delete(keys.bars(feed), keys.announced(feed), events)


async def test_recorder_writes_one_call_per_node_and_slot_by_slot_when_a_node_refuses(
        redis_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bookkeeping script runs once per node (its writes span that node's slots); a call that
    reaches a node without some of its keys (a slot moved meanwhile: here, writes grouped as if
    one node held every slot) is refused, and the writes go again one call per slot."""
    settings = RedisSettings(url=redis_cluster.url, cluster=True)
    keys = RedisKeys(f"test-cl-{uuid.uuid4().hex[:8]}")
    feeds = [Feed("binance", f"S{i}/USDT", MINUTE) for i in range(30)]
    writes: list[recorder_module.Write] = [["h", keys.prediction(f), "volume", str(i)] for i, f in enumerate(feeds)]
    writes += [["x", keys.predictions(f), "1000-0", "volume", str(i)] for i, f in enumerate(feeds)]
    async with redis_client(settings) as redis:
        calls = recorder_module._by_node(redis, writes)
        assert len(calls) == 3  # one per master
        recorder = recorder_module.Recorder(redis, keys, kept=100, score_window=10)
        assert (await recorder.apply(writes)).replayed == 0
        assert [await redis.hget(keys.prediction(f), "volume") for f in feeds] == [str(i).encode() for i in range(30)]
        wrong = [([writes[0][1]], recorder_module._script_args(writes))]  # every write sent to one node
        monkeypatch.setattr(recorder_module, "_by_node", lambda _redis, _writes: wrong)
        again = await recorder.apply(writes)
        assert again.writes == len(writes) and again.replayed == 30  # the stream entries were there
        assert all([await redis.xlen(keys.predictions(f)) == 1 for f in feeds])
        await redis.delete(*[keys.prediction(f) for f in feeds], *[keys.predictions(f) for f in feeds])


async def test_stream_reads_are_routed_without_asking_a_node_for_their_keys(redis_cluster: LocalCluster) -> None:
    """XREADGROUP / XREAD name their keys after a keyword: routed by them here, with no COMMAND
    GETKEYS round trip (redis-py sent one before each read); several slots still refused."""
    settings = RedisSettings(url=redis_cluster.url, cluster=True)
    prefix = f"test-cl-{uuid.uuid4().hex[:8]}"
    streams = [f"{prefix}:{{s{i}}}:events" for i in range(6)]  # tags of several slots, on several masters

    async def getkeys_calls() -> int:
        total = 0
        for port in redis_cluster.ports:
            async with aioredis.Redis(port=port) as node:
                stats: Any = await node.info("commandstats")
                total += int(stats.get("cmdstat_command|getkeys", {}).get("calls", 0))
        return total

    async with redis_client(settings) as redis:
        for stream in streams:
            await redis.xgroup_create(stream, "g", id="0", mkstream=True)
            await redis.xadd(stream, {"n": stream})
        before = await getkeys_calls()
        for stream in streams:
            read: Any = await redis.xreadgroup("g", "c", {stream: ">"}, count=10)
            assert [(name, [f for _, f in entries]) for name, entries in read] == [
                (stream.encode(), [{b"n": stream.encode()}])]
            # RESP2: a list of [name, entries] (redis-py's reply type also has RESP3's dict)
            assert [name for name, _ in cast(list[list[Any]], await redis.xread({stream: "0"}, count=10))] == [
                stream.encode()]
        assert await getkeys_calls() == before
        with pytest.raises(Exception, match="slot"):
            await redis.xread({streams[0]: "0", streams[1]: "0"}, count=1)
        await redis.delete(*streams)
