"""The bars a boundary's predictions are made from: held in memory, topped up from Redis.

Each feed's recent bars stay in a ``BarMatrix``. A worker sees every bar of its feeds in order,
so a boundary usually needs one new bar per feed: those are read with ONE ``XREAD`` over every
feed's bar stream from the last bar held (``COUNT 1``). Anything else is read in the same round
trip: a feed this process has not seen yet, or has not seen for more than ``look_back`` bars
(a restart, another worker of the group had it), reads its last ``look_back`` bars afresh; a
feed that missed a few bars (events claimed from a dead worker, or handled by another worker)
reads the bars since its last one; and an old event (replayed after a restart: the feed has
moved on) whose window the matrix no longer holds is read into a one-off matrix, so that its
prediction is made from the bars it names without disturbing the held ones. So is a feed far
behind the others (its window starts before the matrix's first column, which every feed
shares): a replay of another day, or a feed whose first hundreds of bars close at once.
Whether a prediction is the feed's newest (published) or a replayed older one (recorded only)
is decided by the newest bar each feed was ready at, not by which matrix held it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis

from forecaster.bar_matrix import COLUMNS, BarMatrix, StoredBatch
from forecaster.frame import BarFrame, FloatArray
from forecaster.heap import collector_paused
from volcast.keys import Feed, RedisKeys

log = logging.getLogger(__name__)

_FIELDS: tuple[bytes, ...] = tuple(name.encode() for name in COLUMNS)
FULL_READ_CHUNK = 100
"""Feeds read afresh per round trip: their replies (look_back entries each) are parsed and dropped
before the next chunk is read, so a start does not hold every feed's reply at once."""
_Entry = tuple[bytes, Mapping[bytes, bytes]]


class Histories:
    """What ``BarHistories.at`` read for one boundary: bar ``open_ms`` and the bars before it.

    ``one_off`` holds the feeds of old events read just for this boundary.
    """

    def __init__(self, open_ms: int, asked: Sequence[Feed], main: BarMatrix,
                 one_off: BarMatrix | None = None, newest: dict[Feed, int] | None = None) -> None:
        self.open_ms = open_ms
        self.main = main
        self.one_off = one_off
        # Once per boundary: a Feed's hash is a tuple hash, and 1000 feeds are looked up often.
        self.lengths: dict[Feed, int] = {}
        for feed in asked:
            n = self._matrix(feed).available(feed, open_ms)
            if n > 0:
                self.lengths[feed] = n
        self._tracked = newest is not None
        self._older: set[Feed] = set()  # ready feeds for which a newer bar was ready before
        if newest is not None:
            for feed in self.lengths:
                seen = newest.get(feed)
                if seen is not None and seen > open_ms:
                    self._older.add(feed)
                else:
                    newest[feed] = open_ms

    @property
    def ready(self) -> list[Feed]:
        """Feeds whose bar open_ms is known, in the order asked."""
        return list(self.lengths)

    def _matrix(self, feed: Feed) -> BarMatrix:
        return self.one_off if self.one_off is not None and self.one_off.last_ms(feed) is not None else self.main

    def length(self, feed: Feed) -> int:
        """Bars of history (contiguous, ending with bar ``open_ms``)."""
        return self.lengths.get(feed, 0)

    def latest(self, feed: Feed) -> bool:
        """False for a replayed old event: the feed has moved on, its prediction must not replace
        a newer one."""
        if self._tracked:
            return feed not in self._older
        return self._matrix(feed) is self.main and self.main.last_ms(feed) == self.open_ms

    def last_volumes(self, feeds: Sequence[Feed]) -> list[float]:
        out: dict[Feed, float] = {}
        for matrix, group in self._split(feeds):
            out.update(zip(group, matrix.volumes(group, self.open_ms).tolist(), strict=True))
        return [out[f] for f in feeds]

    def batches(self, feeds: Sequence[Feed], length: int, chunk: int | None = None
                ) -> list[tuple[list[Feed], StoredBatch]]:
        """The last ``length`` bars of ``feeds`` as batches of at most ``chunk`` feeds (feeds
        reordered: by matrix, then by row, so that each batch is a view when it can be)."""
        out = []
        for matrix, group in self._split(feeds):
            ordered = matrix.in_row_order(group)
            size = chunk or len(ordered)
            out += [matrix.batch(ordered[lo:lo + size], self.open_ms, length) for lo in range(0, len(ordered), size)]
        return out

    def frame(self, feed: Feed, length: int | None = None) -> BarFrame:
        return self._matrix(feed).frame(feed, self.open_ms, length)

    def _split(self, feeds: Sequence[Feed]) -> list[tuple[BarMatrix, list[Feed]]]:
        one_off = self.one_off
        if one_off is None:
            return [(self.main, list(feeds))] if feeds else []
        held = [f for f in feeds if one_off.last_ms(f) is None]
        read = [f for f in feeds if one_off.last_ms(f) is not None]
        return [(m, g) for m, g in ((self.main, held), (one_off, read)) if g]


class BarHistories:
    """Per-feed bars of one interval, ``look_back`` of them at least, read from Redis as needed."""

    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, interval_ms: int, look_back: int) -> None:
        self._redis = redis
        self._keys = keys
        self.interval_ms = interval_ms
        self.matrix = BarMatrix(interval_ms, look_back)
        self.bars_read = 0
        self.full_reads = 0  # feeds read afresh (look_back bars), for tests and the status
        # The newest bar each feed was ready at: a one-off read (a feed far behind the others)
        # can still be the feed's newest bar, and an older one must not replace its forecast.
        self._newest: dict[Feed, int] = {}

    @property
    def look_back(self) -> int:
        return self.matrix.look_back

    def set_look_back(self, look_back: int) -> None:
        """A model with a longer look_back needs older bars than held: start afresh."""
        if look_back > self.matrix.look_back:
            self.matrix = BarMatrix(self.interval_ms, look_back)

    def forget(self, feed: Feed) -> None:
        self.matrix.forget(feed)

    def make_room(self, next_ms: int) -> None:
        """Between boundaries: shift the matrix now if bar ``next_ms`` would need it."""
        self.matrix.make_room(next_ms)

    async def at(self, feeds: Sequence[Feed], open_ms: int) -> Histories:
        """Each feed's history ending with its bar ``open_ms``, reading only what is not held.

        A feed whose bar is not in Redis (trimmed, or an event without its bar) is not ready.
        """
        matrix = self.matrix
        interval = self.interval_ms
        look_back = matrix.look_back
        nexts: dict[str, Feed] = {}  # bar stream -> feed, for the XREAD of each feed's next bar
        since: list[Feed] = []  # a few bars missed
        fresh: list[Feed] = []  # unknown, or too far behind: the last look_back bars
        old: list[Feed] = []  # an old event whose window is not held
        previous = open_ms - interval
        for feed in dict.fromkeys(feeds):
            last = matrix.last_ms(feed)
            if last is None or open_ms - last >= look_back * interval:
                (fresh if matrix.fits(open_ms) else old).append(feed)
            elif last == previous:
                nexts[self._keys.bars(feed)] = feed
            elif last < open_ms:
                since.append(feed)
            elif matrix.available(feed, open_ms) < look_back:
                old.append(feed)
        one_off = BarMatrix(interval, look_back) if old else None
        if nexts or since:
            pipe = self._redis.pipeline(transaction=False)
            if nexts:
                after = f"{previous}-0"
                pipe.xread(dict.fromkeys(nexts, after), count=1)
            for feed in since:
                pipe.xrange(self._keys.bars(feed), min=str(_held(matrix, feed) + 1), max=str(open_ms))
            replies: list[Any] = await pipe.execute()
            if nexts:
                self._append_next(replies[0], nexts, open_ms)
            for feed, entries in zip(since, replies[1:] if nexts else replies, strict=True):
                self._write(matrix, feed, entries, continues=True)
        whole = [(feed, matrix) for feed in fresh] + [(feed, one_off) for feed in old if one_off is not None]
        if whole:
            # Pausing the collector matters for a start (every feed read afresh), see heap.py.
            with collector_paused() if len(whole) >= FULL_READ_CHUNK else contextlib.nullcontext():
                for lo in range(0, len(whole), FULL_READ_CHUNK):
                    chunk = whole[lo:lo + FULL_READ_CHUNK]
                    pipe = self._redis.pipeline(transaction=False)
                    for feed, _ in chunk:
                        pipe.xrevrange(self._keys.bars(feed), max=str(open_ms), min="-", count=look_back)
                    for (feed, into), entries in zip(chunk, await pipe.execute(), strict=True):
                        self.full_reads += into is matrix
                        self._write(into, feed, list(reversed(entries)), continues=False)
        return Histories(open_ms, list(dict.fromkeys(feeds)), matrix, one_off, self._newest)

    def _append_next(self, reply: Any, nexts: Mapping[str, Feed], open_ms: int) -> None:
        """The XREAD of each feed's next bar: the ones that are bar ``open_ms``, in one write."""
        feeds: list[Feed] = []
        flat: list[bytes] = []
        stamp = f"{open_ms}-0".encode()
        for key, entries in reply or []:
            feed = nexts[key.decode() if isinstance(key, bytes) else key]
            entry_id, fields = entries[0]
            if entry_id != stamp:
                continue  # bar open_ms is not in Redis (the next one is): not ready
            try:
                flat.extend(fields[name] for name in _FIELDS)
            except KeyError:
                log.warning("bar %s of %s has no %s", open_ms, feed, [n for n in _FIELDS if n not in fields])
                continue
            feeds.append(feed)
        self.bars_read += len(feeds)
        if feeds:
            values = np.array(flat, dtype=np.float64).reshape(len(feeds), len(_FIELDS)).T
            self.matrix.append(feeds, open_ms, values)

    def _write(self, matrix: BarMatrix, feed: Feed, entries: Sequence[_Entry], *, continues: bool) -> None:
        """XRANGE entries (oldest first) of one feed into ``matrix``."""
        parsed = _parse(feed, entries)
        if parsed is None:
            return
        times, values = parsed
        self.bars_read += len(times)
        matrix.write(feed, times, values, continues=continues)


def _held(matrix: BarMatrix, feed: Feed) -> int:
    last = matrix.last_ms(feed)
    assert last is not None
    return last


def _parse(feed: Feed, entries: Sequence[_Entry]) -> tuple[npt.NDArray[np.int64], FloatArray] | None:
    times: list[int] = []
    flat: list[bytes] = []
    for entry_id, fields in entries:
        try:
            row = [fields[name] for name in _FIELDS]
        except KeyError:
            log.warning("skipping bar %r of %s: fields missing", entry_id, feed)
            continue
        times.append(int(entry_id.split(b"-", 1)[0]))
        flat.extend(row)
    if not times:
        return None
    return np.array(times, dtype=np.int64), np.array(flat, dtype=np.float64).reshape(len(times), len(_FIELDS)).T
