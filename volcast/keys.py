"""Every Redis key and MQTT topic name, built here and nowhere else.

All keys of one feed share a Redis Cluster hash tag ``{exchange:symbol:interval}``, so a feed's
bars, open bar, health and predictions live in one slot and can be written in one transaction.

Layout (``P`` is ``redis.key_prefix``, ``T`` the feed's hash tag):

- ``P:T:bars``         Stream of closed bars; entry id ``<open_time_ms>-0`` so a rewrite is idempotent.
- ``P:T:open``         Hash: the bar still forming, refreshed at most every ``bars.open_bar_update``.
- ``P:T:health``       Hash with a TTL heartbeat: the feed's state and counters.
- ``P:T:prediction``   Hash: the latest prediction for this feed.
- ``P:T:predictions``  Stream of predictions (entry id = predicted bar open time), with realised error.
- ``P:T:realised``     Stream of realised errors (entry id = the predicted bar's open time).
- ``P:T:scores``       Hash: rolling live scores (rmse_log, MASE against naive, 80% band coverage).
- ``P:T:lease``        Hash with a TTL (``streamer.lease_ttl``): the streamer that streams this feed
                       (``owner``) and its fencing token (``token``); only with ``streamer.leases``.
- ``P:T:fence``        String: the feed's fencing counter, INCR on every lease acquisition; a bar,
                       open-bar or health write carrying another token is refused.
- ``P:{streamers}``    Sorted set: live streamers by name, scored by when their registration lapses.
- ``P:{streamers}:N``  Hash with a TTL: streamer ``N``'s feeds held, refused stale writes, pid, host.
- ``P:T:calibration``  Hash: the band calibrator's state per horizon (forecaster/calibration.py).
- ``P:events:bars:I``  Stream of bar-closed events for interval ``I``, read by a consumer group.
- ``P:events:bars:I:dead``  Stream of the events the forecaster could not handle (dead letters):
                       the event's fields, the error, how often it failed.
- ``P:events:bars:I:{I:k}``, ``P:events:bars:I:{I:k}:dead``  The same, shard ``k`` of
                       ``redis.event_shards`` > 1 (with 1, the two keys above): each shard and its
                       dead letters in one hash slot of their own, feeds spread by ``event_shard``.
- ``P:T:announced``    String: the open time of the feed's newest bar whose event is known written
                       (Redis Cluster only, where a bar and its event are in different slots).
- ``P:model``          Hash: the promoted model's name, version and scores.
- ``P:refit``          Hash: the refit worker's last run, result and next run.
- ``P:forecaster``     Hash: the forecaster's heartbeat and last batch.
- ``P:forecaster:alive:C``  String with a TTL of ``forecaster.claim_idle``: consumer ``C`` runs
                       ("1": and its broker takes its forecasts; "0": it cannot publish).
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass, field

from volcast.durations import format_duration_ms


@dataclass(frozen=True, slots=True)
class Feed:
    """One stream of trades: an exchange's symbol, cut into bars of one interval."""

    exchange: str
    symbol: str
    interval_ms: int
    # Feeds key most of the forecaster's per-boundary dicts (about ten lookups per feed): the
    # generated __hash__ built and hashed a tuple every time, 4 ms per boundary at 1000 feeds.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.exchange, self.symbol, self.interval_ms)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def interval(self) -> str:
        return format_duration_ms(self.interval_ms)


@functools.cache
def _tag(feed: Feed) -> str:
    # Braces inside the tag would change the slot, and ccxt symbols never contain them. Cached:
    # the forecaster builds about five keys per feed per boundary (2.5 -> 0.8 ms at 1000 feeds),
    # and a process only ever sees the feeds it serves.
    return "{" + f"{feed.exchange}:{feed.symbol}:{feed.interval}" + "}"


def event_shard(feed: Feed, shards: int) -> int:
    """The feed's event shard: a hash of exchange and symbol that every process and version agrees
    on (CRC-32; Python's own ``hash`` of a str differs from process to process)."""
    if shards == 1:
        return 0
    return zlib.crc32(f"{feed.exchange}:{feed.symbol}".encode()) % shards


def slot_tag(key: str) -> str:
    """The part of ``key`` Redis Cluster hashes (its first non-empty ``{...}``, else all of it):
    keys with equal tags share a slot."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key


class RedisKeys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def bars(self, feed: Feed) -> str:
        return f"{self.prefix}:{_tag(feed)}:bars"

    def open_bar(self, feed: Feed) -> str:
        return f"{self.prefix}:{_tag(feed)}:open"

    def health(self, feed: Feed) -> str:
        return f"{self.prefix}:{_tag(feed)}:health"

    def prediction(self, feed: Feed) -> str:
        return f"{self.prefix}:{_tag(feed)}:prediction"

    def predictions(self, feed: Feed) -> str:
        return f"{self.prefix}:{_tag(feed)}:predictions"

    def realised(self, feed: Feed) -> str:
        return f"{self.prefix}:{_tag(feed)}:realised"

    def scores(self, feed: Feed) -> str:
        return f"{self.prefix}:{_tag(feed)}:scores"

    def announced(self, feed: Feed) -> str:
        return f"{self.prefix}:{_tag(feed)}:announced"

    def lease(self, feed: Feed) -> str:
        return f"{self.prefix}:{_tag(feed)}:lease"

    def fence(self, feed: Feed) -> str:
        return f"{self.prefix}:{_tag(feed)}:fence"

    def streamers(self) -> str:
        # One hash tag for the registry and every streamer's hash: its script touches one slot.
        return f"{self.prefix}:{{streamers}}"

    def streamer(self, name: str) -> str:
        return f"{self.streamers()}:{name}"

    def calibration(self, feed: Feed) -> str:
        return f"{self.prefix}:{_tag(feed)}:calibration"

    def bar_events(self, interval_ms: int, shard: int = 0, shards: int = 1) -> str:
        """Shard ``shard`` of ``shards`` event streams; one shard keeps the name of old."""
        interval = format_duration_ms(interval_ms)
        if shards == 1:
            return f"{self.prefix}:events:bars:{interval}"
        if not 0 <= shard < shards:
            raise ValueError(f"event shard {shard} of {shards}")
        return f"{self.prefix}:events:bars:{interval}:" + "{" + f"{interval}:{shard}" + "}"

    def event_streams(self, interval_ms: int, shards: int) -> list[str]:
        """Every event stream of an interval, shard 0 first."""
        return [self.bar_events(interval_ms, k, shards) for k in range(shards)]

    def feed_events(self, feed: Feed, shards: int) -> str:
        """The event stream the feed's bar-closed events go to."""
        return self.bar_events(feed.interval_ms, event_shard(feed, shards), shards)

    def dead_events(self, interval_ms: int, shard: int = 0, shards: int = 1) -> str:
        """The dead letters of one event stream, in the same hash slot."""
        return f"{self.bar_events(interval_ms, shard, shards)}:dead"

    def model(self) -> str:
        return f"{self.prefix}:model"

    def refit(self) -> str:
        return f"{self.prefix}:refit"

    def forecaster(self) -> str:
        return f"{self.prefix}:forecaster"

    def consumer_alive(self, consumer: str) -> str:
        return f"{self.prefix}:forecaster:alive:{consumer}"


def topic_safe(symbol: str) -> str:
    """``BTC/USDT`` -> ``BTC-USDT``: a topic level may not hold ``/``, ``+`` or ``#``."""
    return "".join("-" if c in "/+#" else ("_" if c in " \0" else c) for c in symbol)


def forecast_topic(prefix: str, feed: Feed) -> str:
    return f"{prefix}/{topic_safe(feed.exchange)}/{topic_safe(feed.symbol)}/{feed.interval}/forecast"


def forecast_topic_filter(prefix: str) -> str:
    """Subscribe to this for every feed's forecasts."""
    return f"{prefix}/+/+/+/forecast"
