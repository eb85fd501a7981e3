"""A Redis Cluster client's first slot-map read, retried until a node answers.

redis-py's cluster client reads the slot map from its start-up nodes (``redis.url``, then
``redis.cluster_nodes``) on its first command. If none answers, for example ``redis.url`` names a
master that just died and is not yet replaced, that first read raises
``RedisClusterUnreachableError``, which is neither a connection error nor retried by redis-py, and
a service that met it in its first command ended with a traceback (docs/operations.md,
"Failover"). Once the map is read redis-py follows failovers by itself (it knows every node then).
So a service reads the map before anything else and, while no node answers, says so and retries
with backoff, as it does for an outage. (``async with`` a cluster client reads the map on entry:
``started_redis`` is the client a service enters instead.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from volcast.backoff import Backoff
from volcast.connections import is_cluster, redact_url, redis_client
from volcast.settings import RedisSettings

log = logging.getLogger(__name__)

# Refusals that waiting does not fix (check_redis names them at start-up): raised at once.
_FOR_GOOD = ("not enabled", "disabled")


async def read_slot_map(redis: aioredis.Redis, settings: RedisSettings, backoff: Backoff | None = None) -> None:
    """On a cluster, until the slot map is read (retried with ``backoff``, logged); else nothing."""
    if not is_cluster(redis):
        return
    backoff = backoff or Backoff(0.1, 5.0)
    while True:
        try:
            await cast(RedisCluster, redis).initialize()
            return
        except redis_errors.AuthenticationError:
            raise
        except (redis_errors.RedisClusterException, redis_errors.ConnectionError, redis_errors.TimeoutError,
                OSError) as exc:
            if any(text in str(exc) for text in _FOR_GOOD):
                raise
            delay = backoff.next_delay()
            log.warning(
                "Redis Cluster at %s: no start-up node answered the slot map read (%s); a master down and not "
                "yet replaced, or the cluster still starting? Retry in %.1fs (list more nodes in "
                "redis.cluster_nodes to start while one is down)", redact_url(settings.url), exc, delay)
            await asyncio.sleep(delay)


@asynccontextmanager
async def started_redis(settings: RedisSettings, backoff: Backoff | None = None) -> AsyncIterator[aioredis.Redis]:
    """``redis_client(settings)`` once its slot map is read (``read_slot_map``), closed on exit."""
    client = redis_client(settings)
    try:
        await read_slot_map(client, settings, backoff)
        yield client
    finally:
        await client.aclose()
