"""Bar-closed events as the worker reads them: parsed and checked before anything is done with them.

An event names a feed and the open time of its bar that closed. Whatever is on the stream (a
hand-written entry, a writer of another version, a stray ``XADD``), an entry that cannot be one
of this worker's events gets a ``problem`` saying why, and is dead-lettered rather than read:
a negative open time, for one, became an invalid stream id in the bar read, which the worker
took for a Redis outage and retried for ever.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from volcast.durations import format_duration_ms
from volcast.keys import Feed

LATEST_OPEN_MS = 4_102_444_800_000
"""2100-01-01: an open time past it is not a bar of this century's exchanges (a unit slip, say)."""
_REQUIRED = (b"exchange", b"symbol", b"open_time_ms")


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of the events stream; ``feed`` is None when ``problem`` says why it is not an event."""

    entry_id: bytes
    feed: Feed | None
    open_time_ms: int
    fields: Mapping[bytes, bytes]
    problem: str | None = None
    shard: int = 0  # the event shard (redis.event_shards) it was read from
    rev: int = 0  # above 0: the bar was rewritten after a late trade (forecaster/late_events.py)


class EventParser:
    """Parses one interval's events; one Feed object per feed for the life of the process.

    The held bars and every per-feed table of the worker are keyed by Feed, and a lookup with the
    very object that is the key skips the dataclass ``__eq__`` (7000 calls, about 2 ms per
    boundary at 1000 feeds). ``known``: the (exchange, symbol) pairs of the config; an event of
    any other feed is not this deployment's (None: every feed is accepted).
    """

    def __init__(self, interval_ms: int, known: frozenset[tuple[str, str]] | None = None) -> None:
        self.interval_ms = interval_ms
        self.interval = format_duration_ms(interval_ms).encode()
        self.known = known
        self._feeds: dict[tuple[bytes, bytes], Feed] = {}

    def parse(self, entry_id: bytes, fields: Mapping[bytes, bytes], shard: int = 0) -> Event:
        feed = self._feeds.get((fields.get(b"exchange", b""), fields.get(b"symbol", b"")))
        if feed is not None:  # the usual case: a feed seen before, only the open time to check
            open_ms = _int(fields.get(b"open_time_ms"))
            same_interval = fields.get(b"interval", self.interval) == self.interval
            if open_ms is not None and same_interval and self._on_grid(open_ms):
                return Event(entry_id, feed, open_ms, fields, None, shard, _rev(fields))
        problem = self._problem(fields)
        if problem is not None:
            return Event(entry_id, None, 0, fields, problem, shard)
        exchange, symbol = fields[b"exchange"], fields[b"symbol"]
        feed = Feed(exchange.decode(), symbol.decode(), self.interval_ms)
        self._feeds[(exchange, symbol)] = feed
        open_ms = _int(fields[b"open_time_ms"])
        assert open_ms is not None  # _problem checked it
        return Event(entry_id, feed, open_ms, fields, None, shard, _rev(fields))

    def _on_grid(self, open_ms: int) -> bool:
        return 0 <= open_ms <= LATEST_OPEN_MS and open_ms % self.interval_ms == 0

    def _problem(self, fields: Mapping[bytes, bytes]) -> str | None:
        missing = [name.decode() for name in _REQUIRED if not fields.get(name)]
        if missing:
            return f"missing {', '.join(missing)}"
        try:
            exchange, symbol = fields[b"exchange"].decode(), fields[b"symbol"].decode()
        except UnicodeDecodeError:
            return "exchange or symbol is not UTF-8"
        interval = fields.get(b"interval", self.interval)
        if interval != self.interval:
            return f"interval {interval!r} on the stream of {self.interval.decode()} bars"
        raw = fields[b"open_time_ms"]
        open_ms = _int(raw)
        if open_ms is None or not self._on_grid(open_ms):
            return f"open_time_ms {raw!r} is not a {self.interval.decode()} bar open time (ms since 1970, aligned)"
        if self.known is not None and (exchange, symbol) not in self.known:
            return f"{exchange} {symbol} is not a feed of this config"
        return None


def _rev(fields: Mapping[bytes, bytes]) -> int:
    """The bar revision an event announces (absent: 0, the bar as it closed; unreadable: 0 too,
    the event is still the bar's)."""
    raw = fields.get(b"rev")
    if raw is None:
        return 0
    return _int(raw) or 0


def _int(raw: bytes | None) -> int | None:
    if raw is None or not raw.isdigit() or len(raw) > 16:  # digits only: no sign, no spaces, no float
        return None
    return int(raw)
