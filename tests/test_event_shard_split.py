"""Workers of one group split the event shards (forecaster/event_reads.py): each reads new events
only from its own shards, so a feed stays with one worker; a worker whose alive key is gone (it
died) or says "0" (it cannot publish) leaves its shards to the others; with more workers than
shards every worker reads every shard. Real Redis, single node and cluster."""

from __future__ import annotations

import uuid
from typing import Any

from forecaster.event_reads import ShardReader
from volcast.connections import redis_client
from volcast.keys import RedisKeys
from volcast.settings import RedisSettings

GROUP = "forecasters"


async def test_workers_split_the_shards_and_take_a_gone_ones(redis_config: dict[str, Any]) -> None:
    prefix = f"test-split-{uuid.uuid4().hex[:8]}"
    keys = RedisKeys(prefix)
    streams = keys.event_streams(60_000, 3)
    async with redis_client(RedisSettings(**{**redis_config, "key_prefix": prefix})) as redis:
        try:
            for stream in streams:
                await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            readers = {name: ShardReader(redis, streams, GROUP, name, alive_key=keys.consumer_alive,
                                         claim_idle_ms=1000) for name in ("a", "b")}
            for name, reader in readers.items():
                await redis.set(keys.consumer_alive(name), "1", px=10_000)
                assert await reader.read(dict.fromkeys(range(3), "0"), 10) == []  # joins the group on every shard
            for reader in readers.values():
                await reader.refresh()
            assert readers["a"].owned == {0, 2} and readers["b"].owned == {1}

            for k, stream in enumerate(streams):
                await redis.xadd(stream, {"shard": str(k)})
            got_a = await readers["a"].read(dict.fromkeys(range(3), ">"), 10)
            got_b = await readers["b"].read(dict.fromkeys(range(3), ">"), 10, block=100)
            assert sorted(k for k, _ in got_a) == [0, 2]
            assert [k for k, _ in got_b] == [1]

            # b cannot publish: a takes every shard (b still reads its own until it looks again)
            await redis.set(keys.consumer_alive("b"), "0", px=10_000)
            await readers["a"].refresh()
            assert readers["a"].owned == {0, 1, 2}
            await redis.set(keys.consumer_alive("b"), "1", px=10_000)
            await readers["a"].refresh()
            assert readers["a"].owned == {0, 2}
            # b died: its alive key expired
            await redis.delete(keys.consumer_alive("b"))
            await readers["a"].refresh()
            assert readers["a"].owned == {0, 1, 2}
            await redis.xadd(streams[1], {"shard": "1"})
            assert [k for k, _ in await readers["a"].read(dict.fromkeys(range(3), ">"), 10)] == [1]

            # more live workers than shards: each reads every shard, as without a split
            for name in ("b", "c", "d"):
                await redis.set(keys.consumer_alive(name), "1", px=10_000)
            extra = [ShardReader(redis, streams, GROUP, n, alive_key=keys.consumer_alive) for n in ("c", "d")]
            for reader in extra:
                await reader.read(dict.fromkeys(range(3), "0"), 10)
            await readers["a"].refresh()
            assert readers["a"].owned == {0, 1, 2} and readers["a"].workers == 4
        finally:
            async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
                await redis.delete(key)
