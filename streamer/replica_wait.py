"""``redis.wait_replicas``: bars a replica holds before their events announce them.

Redis replicates asynchronously: a master acknowledges a bar before any replica has it, and a
master killed in that moment takes the bar with it while its event (on another node, or read
already) announces it. With ``wait_replicas`` = n > 0 the bar writer sends ``WAIT n timeout``
after each batch of bars, before their events, so an event announces a bar n replicas
acknowledged (unless the WAIT timed out: counted, and the feed goes on).

``WAIT`` covers the writes of the connection it is sent on. One node: it is queued last on the
batch's pipeline (one connection). A cluster: once per master the batch wrote to, queued on the
same cluster pipeline with ``target_nodes`` that master; redis-py sends a node's commands in
order on one connection, so each WAIT follows its master's bar writes. A bar redis-py had to
resend to another node (a ``MOVED`` during a failover) went without that WAIT: it is counted as
unconfirmed, like a timeout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from volcast.connections import is_cluster

log = logging.getLogger(__name__)

# A master whose WAIT came short (its replica down, or none yet after a failover) is asked again at
# most this often: each WAIT to it would hold every batch for the whole timeout, for nothing.
_RETRY_SHORT_S = 5.0


@dataclass(slots=True)
class WaitCounters:
    waits: int = 0  # WAIT commands sent (one per batch on one node, one per master touched on a cluster)
    # batches (per master) whose bars are not known replicated: the WAIT came short or failed, did
    # not follow a bar (MOVED), or was not sent to a master that came short within _RETRY_SHORT_S
    timeouts: int = 0


class ReplicaWait:
    """Queues the WAITs of one batch of bar writes and counts what they answered."""

    def __init__(self, redis: aioredis.Redis, replicas: int, timeout_ms: int) -> None:
        if replicas < 1 or timeout_ms < 1:
            raise ValueError(f"WAIT needs at least one replica and a timeout of at least 1 ms, got {replicas} "
                             f"and {timeout_ms} ms (a timeout of 0 would block for ever)")
        self.redis = redis
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        self.counters = WaitCounters()
        self._cluster = is_cluster(redis)
        self._short: dict[str, float] = {}  # node -> when its last WAIT came short (monotonic)
        self._skipped: list[str] = []  # masters of the batch being written not asked (_RETRY_SHORT_S)

    def queue(self, pipe: Any, keys: Iterable[str]) -> list[str]:
        """Queue the WAIT(s) after the writes already on ``pipe`` to ``keys``; returns the node each
        WAIT goes to (one entry, "", on one node), in queue order."""
        nodes: dict[str, Any] = {"": None}
        if self._cluster:
            nodes = {}
            for key in keys:
                node = self.redis.get_node_from_key(key)  # type: ignore[attr-defined]
                nodes.setdefault(node.name, node)
        now = time.monotonic()
        waited = []
        self._skipped = []
        for name, node in nodes.items():
            if now - self._short.get(name, -_RETRY_SHORT_S) < _RETRY_SHORT_S:
                self._skipped.append(name)
                continue
            if node is None:
                pipe.execute_command("WAIT", self.replicas, self.timeout_ms)
            else:
                pipe.execute_command("WAIT", self.replicas, self.timeout_ms, target_nodes=node)
            waited.append(name)
        return waited

    def count(self, nodes: list[str], replies: list[Any], written: Iterable[str]) -> None:
        """Count the WAIT ``replies`` (to ``nodes``) of a batch that wrote ``written`` keys."""
        self.counters.waits += len(replies)
        self.counters.timeouts += len(self._skipped)
        new = []
        now = time.monotonic()
        for node, reply in zip(nodes, replies, strict=True):
            if isinstance(reply, ResponseError) or not isinstance(reply, int) or reply < self.replicas:
                self.counters.timeouts += 1
                if node not in self._short:  # said once, until that master's replicas answer again
                    new.append(f"{node or 'redis'}: {reply!r}")
                self._short[node] = now
            else:
                self._short.pop(node, None)
        if self._cluster:
            # A key whose slot moved while the batch ran was written (by redis-py's redirect) on a
            # connection no WAIT followed: its bar is not known replicated.
            asked = set(nodes) | set(self._skipped)
            moved = {key for key in written if self.redis.get_node_from_key(key).name not in asked}  # type: ignore[attr-defined]
            if moved:
                self.counters.timeouts += 1
                new.append(f"{len(moved)} keys moved to another master during the write")
        if new:
            log.warning("WAIT %d %d ms: fewer replicas than redis.wait_replicas acknowledged bars (%s); their "
                        "events go out anyway, counted as replica_wait_timeouts; that master is asked again every "
                        "%.0f s meanwhile", self.replicas, self.timeout_ms, "; ".join(new), _RETRY_SHORT_S)
