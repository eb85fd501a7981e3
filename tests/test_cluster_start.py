"""A service started while the Redis Cluster node it is pointed at is down (volcast/cluster_start.py):
its first slot-map read is retried, with a message saying why, until a node answers, instead of
ending the service with redis-py's ``RedisClusterUnreachableError``.

The cluster is this test's own (tests/cluster.py), since a node of it is killed and restarted.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import pytest
from cluster import LocalCluster

from volcast.backoff import Backoff
from volcast.cluster_start import read_slot_map
from volcast.connections import redis_client
from volcast.settings import RedisSettings

pytestmark = pytest.mark.slow


async def test_the_first_slot_map_read_waits_for_a_node_to_answer(
        own_cluster: LocalCluster, caplog: pytest.LogCaptureFixture) -> None:
    cluster = own_cluster
    dead = cluster.ports[0]
    cluster.processes[dead].send_signal(signal.SIGKILL)
    cluster.processes[dead].wait()
    settings = RedisSettings(url=f"redis://127.0.0.1:{dead}", cluster=True)
    client = redis_client(settings)  # as streamer/service.py; the forecaster enters started_redis
    try:
        with caplog.at_level(logging.WARNING, logger="volcast.cluster_start"):
            reading = asyncio.create_task(read_slot_map(client, settings, Backoff(0.05, 0.2)))
            while len(caplog.records) < 3:  # retried, and said so each time
                assert not reading.done(), reading  # an exception here was the service's traceback
                await asyncio.sleep(0.05)
            assert "no start-up node answered the slot map read" in caplog.records[0].getMessage()
            assert "redis.cluster_nodes" in caplog.records[0].getMessage()
            cluster.start_node(dead)  # the node is back (rejoining from its nodes.conf)
            await asyncio.wait_for(reading, timeout=60)
        await client.set("{cluster-start}:probe", "1")
        assert await client.get("{cluster-start}:probe") == b"1"
    finally:
        await client.aclose()
