"""The Redis Cluster deployment: settings, the cluster client from volcast.connections, and the
key layout (every multi-key write one slot) against a real local cluster (tests/cluster.py)."""

from __future__ import annotations

import uuid

import pytest
from cluster import LocalCluster

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
