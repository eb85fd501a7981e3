"""Carrying out a demotion (``forecaster/demotion.py``) in Redis: the serving version in
``keys.model()`` becomes the previous one, and both the model and the refit hashes say so.

The switch is a compare-and-set in one Lua script: it happens only while the demoted version is
still the one named in ``keys.model()``. The refit hash is told after it, apart: on a Redis
Cluster the two hashes are in different slots, and what the refit hash says is for people.
Several workers of a group watch the same version (each its own feeds), and a refit or a rollback
may have named another version meanwhile: the first verdict switches, the others find the version
changed and do nothing. The forecasters then swap the previous version in at their next poll, as
after a rollback.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
import redis.asyncio as aioredis

from forecaster.demotion import Demotion, DemotionWatch
from forecaster.model_store import ModelStore
from volcast.keys import RedisKeys

log = logging.getLogger(__name__)

DEMOTE_SCRIPT = """
-- KEYS[1]: the model hash.
-- ARGV: demoted version, new version ('' = the baseline), its scores (JSON), reason, time (ms).
if redis.call('HGET', KEYS[1], 'version') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'scores', ARGV[3], 'promoted_ms', ARGV[5],
           'demoted_version', ARGV[1], 'demoted_ms', ARGV[5], 'demotion_reason', ARGV[4])
return 1
"""


class Demoter:
    """A ``DemotionWatch`` and what acts on its verdicts (``apply``, from the bookkeeping)."""

    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, store: ModelStore, watch: DemotionWatch) -> None:
        self.redis = redis
        self.keys = keys
        self.store = store
        self.watch = watch
        self.pending: Demotion | None = None  # decided, not yet written (Redis was down)

    def decide(self) -> None:
        """Ask the watch for a verdict (kept until ``apply`` has written it)."""
        if self.pending is None:
            self.pending = self.watch.verdict(self.store.versions())

    async def apply(self) -> bool:
        """Write the pending demotion; True when it switched the serving version. Redis errors
        propagate (the caller retries; the demotion stays pending)."""
        demotion = self.pending
        if demotion is None:
            return False
        scores: dict[str, Any] = {}
        if demotion.to_version is not None:
            scores = self.store.info(demotion.to_version).get("scores") or {}
        now = time.time_ns() // 1_000_000
        switched: Any = await self.redis.eval(
            DEMOTE_SCRIPT, 1, self.keys.model(), demotion.version, demotion.to_version or "",
            orjson.dumps(scores).decode(), demotion.reason, str(now))
        self.pending = None
        if int(switched):
            await self.redis.hset(self.keys.refit(), mapping={
                "demoted_version": demotion.version, "demoted_to": demotion.to_version or "baseline",
                "demoted_ms": str(now), "demotion_reason": demotion.reason})
        if int(switched):
            log.warning("model version %s demoted to %s: %s", demotion.version,
                        demotion.to_version or "the baseline", demotion.reason)
        else:
            log.info("model version %s would have been demoted (%s), but it no longer serves",
                     demotion.version, demotion.reason)
        return bool(int(switched))
