"""The bars a boundary's predictions are made from: held in memory, topped up from Redis.

Each feed's recent bars stay in a ``BarMatrix``. A worker sees every bar of its feeds in order,
so a boundary usually needs one new bar per feed: its event carries it (``EVENT_BAR_FIELDS``,
volcast/bar.py), or else those are read with ONE ``XREAD`` over every feed's bar stream from the
last bar held (``COUNT 1``; on a cluster an ``XRANGE`` per feed). Anything else is read in the same round
trip: a feed this process has not seen yet, or has not seen for more than ``look_back`` bars
(a restart, another worker of the group had it), reads its last ``look_back`` bars afresh; a
feed that missed a few bars (events claimed from a dead worker, or handled by another worker)
reads the bars since its last one; and an old event (replayed after a restart: the feed has
moved on) whose window the matrix no longer holds is read into a one-off matrix, so that its
prediction is made from the bars it names without disturbing the held ones. A feed on a clock
of its own (its window does not fit the main matrix's columns, which every feed shares, or it is
ahead of the others: a replay of other days, a feed whose first hundreds of bars close at once)
is held in a matrix of one row of its own, and rejoins the others once it has caught up.
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
from volcast.connections import is_cluster
from volcast.keys import Feed, RedisKeys
from volcast.redis_text import as_text

log = logging.getLogger(__name__)

_FIELDS: tuple[bytes, ...] = tuple(name.encode() for name in COLUMNS)
FULL_READ_CHUNK = 100
"""Feeds read afresh per round trip: their replies (look_back entries each) are parsed and dropped
before the next chunk is read, so a start does not hold every feed's reply at once."""
_Entry = tuple[bytes, Mapping[bytes, bytes]]
# A history bar may leave trades and buy volume empty (volcast/bar.py HISTORY_MAY_LACK): NaN, so
# that a model trained with them gets no made-up value (its forecast fails the output guard) and
# a model trained without them (refit drops what history lacks) never reads them.
_UNKNOWN = b"nan"
# The largest sequence part of a stream id: ``<open ms>-<this>`` lies after every revision of a bar.
_LAST_REV = 2**64 - 1


class Histories:
    """What ``BarHistories.at`` read for one boundary: bar ``open_ms`` and the bars before it.

    Most feeds are held in ``main``; ``held`` names the others' matrix: a feed on a clock of its
    own (far from the main matrix's), or an old event read just for this boundary (``one_off``).
    """

    def __init__(self, open_ms: int, asked: Sequence[Feed], main: BarMatrix, held: Mapping[Feed, BarMatrix],
                 newest: dict[Feed, int], one_off: BarMatrix | None = None) -> None:
        self.open_ms = open_ms
        self.main = main
        self.one_off = one_off
        self._held = held
        # Once per boundary: a Feed's hash is a tuple hash, and 1000 feeds are looked up often.
        self.lengths: dict[Feed, int] = {}
        for feed in asked:
            n = self._matrix(feed).available(feed, open_ms)
            if n > 0:
                self.lengths[feed] = n
        self._older: set[Feed] = set()  # ready feeds for which a newer bar was ready before
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
        return self._held.get(feed, self.main) if self._held else self.main

    def length(self, feed: Feed) -> int:
        """Bars of history (contiguous, ending with bar ``open_ms``)."""
        return self.lengths.get(feed, 0)

    def latest(self, feed: Feed) -> bool:
        """False for a replayed old event: the feed has moved on, its prediction must not replace
        a newer one."""
        return feed not in self._older

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
        if not self._held:
            return [(self.main, list(feeds))] if feeds else []
        groups: dict[int, tuple[BarMatrix, list[Feed]]] = {}
        for feed in feeds:
            matrix = self._matrix(feed)
            groups.setdefault(id(matrix), (matrix, []))[1].append(feed)
        return list(groups.values())


class BarHistories:
    """Per-feed bars of one interval, ``look_back`` of them at least, read from Redis as needed."""

    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, interval_ms: int, look_back: int) -> None:
        self._redis = redis
        self._keys = keys
        self.interval_ms = interval_ms
        self.matrix = BarMatrix(interval_ms, look_back)
        self.bars_read = 0
        self.bars_carried = 0  # new bars taken from their events instead of read (for tests)
        self.full_reads = 0  # feeds read afresh (look_back bars), for tests and the status
        # The newest bar each feed was ready at: a feed read apart can still be at its newest
        # bar, and an older one must not replace its forecast.
        self._newest: dict[Feed, int] = {}
        # Feeds on a clock of their own, each in a matrix of one row (see ``_place``).
        self._apart: dict[Feed, BarMatrix] = {}

    @property
    def look_back(self) -> int:
        return self.matrix.look_back

    def set_look_back(self, look_back: int) -> None:
        """A model with a longer look_back needs older bars than held: start afresh."""
        if look_back > self.matrix.look_back:
            self.matrix = BarMatrix(self.interval_ms, look_back)
            self._apart.clear()

    def forget(self, feed: Feed) -> None:
        self.matrix.forget(feed)
        self._apart.pop(feed, None)

    @property
    def apart(self) -> int:
        """Feeds held in a matrix of their own (for tests and the status)."""
        return len(self._apart)

    def _place(self, feed: Feed, open_ms: int) -> BarMatrix:
        """Where a feed read afresh is held: in the main matrix, whose columns every feed shares,
        when its window fits there and it is not ahead of the others; else in a matrix of its own.

        Feeds on other clocks (a replay of several days at once, a feed whose first hundreds of
        bars close in one burst) cannot share columns: one far ahead would shift the others out,
        one far behind does not fit. Read into a one-off matrix at every boundary, such a feed
        cost a read of look_back bars per bar, and the worker fell behind (soak benchmark).
        Held apart, it takes one new bar per boundary like the others.
        """
        main = self.matrix
        newest = main.newest_ms
        if main.fits(open_ms) and (newest is None or open_ms <= newest + self.interval_ms):
            self._apart.pop(feed, None)
            return main
        main.forget(feed)
        matrix = self._apart.get(feed)
        if matrix is None:
            matrix = self._apart[feed] = BarMatrix(self.interval_ms, main.look_back, rows=1)
        return matrix

    def make_room(self, next_ms: int) -> None:
        """Between boundaries: shift the matrix now if bar ``next_ms`` would need it."""
        self.matrix.make_room(next_ms)

    async def at(self, feeds: Sequence[Feed], open_ms: int,
                 carried: Mapping[Feed, Mapping[bytes, bytes]] | None = None) -> Histories:
        """Each feed's history ending with its bar ``open_ms``, reading only what is not held.

        ``carried``: the fields of feeds' events of bar ``open_ms`` (not revisions). A feed whose
        event carries the bar's values and that needs only that bar takes it from there, not from
        Redis: on a cluster each worker's read of them was a command per feed and a round trip to
        every master at every boundary. A feed whose bar is read and is not in Redis (trimmed, or
        an event without its bar) is not ready.
        """
        main = self.matrix
        apart = self._apart
        interval = self.interval_ms
        look_back = main.look_back
        nexts: dict[str, Feed] = {}  # bar stream -> feed, for the XREAD of each feed's next bar
        since: list[Feed] = []  # a few bars missed
        fresh: list[tuple[Feed, BarMatrix]] = []  # unknown, or too far behind: the last look_back bars
        old: list[Feed] = []  # an old event whose window is not held
        given: list[Feed] = []  # the next bar, carried by its event
        given_flat: list[bytes] = []
        previous = open_ms - interval
        for feed in dict.fromkeys(feeds):
            matrix = apart.get(feed, main) if apart else main
            last = matrix.last_ms(feed)
            if last is None or open_ms - last >= look_back * interval or (
                    matrix is not main and self._place(feed, open_ms) is main):  # caught up: batched again
                fresh.append((feed, self._place(feed, open_ms)))
            elif last == previous:
                row = _carried(carried.get(feed)) if carried else None
                if row is None:
                    nexts[self._keys.bars(feed)] = feed
                else:
                    given.append(feed)
                    given_flat.extend(row)
            elif last < open_ms:
                since.append(feed)
            elif matrix.available(feed, open_ms) < look_back:
                old.append(feed)
        one_off = BarMatrix(interval, look_back) if old else None
        if given:
            try:
                values = np.array(given_flat, dtype=np.float64).reshape(len(given), len(_FIELDS)).T
            except ValueError:  # not numbers (a hand-written event, say): the bars in Redis are the truth
                log.warning("bar %d: values carried by events are not numbers; reading the bars", open_ms)
                nexts.update((self._keys.bars(feed), feed) for feed in given)
            else:
                self.bars_carried += len(given)
                self._append(given, open_ms, values)
        if nexts or since:
            pipe = self._redis.pipeline(transaction=False)
            # One XREAD of every feed's next bar; on a cluster one XRANGE of bar open_ms per feed
            # (a command names one slot there, and redis-py's cluster client asks a node for the
            # keys of each XREAD, COMMAND GETKEYS: a round trip per feed, 20% of a worker's CPU).
            # Any revision of that bar counts (ids <open ms>-<rev>: streamer/bar_revisions.py), so
            # the XREAD starts after every revision of the bar held and the XRANGE spans them all.
            apart_slots = len(nexts) > 1 and is_cluster(self._redis)
            reads = len(nexts) if apart_slots else 1 if nexts else 0
            if apart_slots:
                for key in nexts:
                    pipe.xrange(key, min=str(open_ms), max=str(open_ms))
            elif nexts:
                pipe.xread(dict.fromkeys(nexts, f"{previous}-{_LAST_REV}"), count=1)
            for feed in since:
                pipe.xrange(self._keys.bars(feed), min=str(_held(apart.get(feed, main), feed) + 1), max=str(open_ms))
            replies: list[Any] = await pipe.execute()
            if apart_slots:
                self._append_next([(key, entries) for key, entries in zip(nexts, replies, strict=False) if entries],
                                  nexts, open_ms)
            elif nexts:
                self._append_next(replies[0], nexts, open_ms)
            for feed, entries in zip(since, replies[reads:], strict=True):
                self._write(apart.get(feed, main), feed, entries, continues=True)
        whole = fresh + [(feed, one_off) for feed in old if one_off is not None]
        if whole:
            # Pausing the collector matters for a start (every feed read afresh), see heap.py.
            with collector_paused() if len(whole) >= FULL_READ_CHUNK else contextlib.nullcontext():
                for lo in range(0, len(whole), FULL_READ_CHUNK):
                    chunk = whole[lo:lo + FULL_READ_CHUNK]
                    pipe = self._redis.pipeline(transaction=False)
                    for feed, _ in chunk:
                        pipe.xrevrange(self._keys.bars(feed), max=str(open_ms), min="-", count=look_back)
                    for (feed, into), entries in zip(chunk, await pipe.execute(), strict=True):
                        self.full_reads += into is not one_off
                        self._write(into, feed, list(reversed(entries)), continues=False)
        asked = list(dict.fromkeys(feeds))
        held: dict[Feed, BarMatrix] = {}
        if apart:
            held = {feed: apart[feed] for feed in asked if feed in apart}
        if one_off is not None:
            held.update((feed, one_off) for feed in old)
        return Histories(open_ms, asked, main, held, self._newest, one_off)

    def _append_next(self, reply: Any, nexts: Mapping[str, Feed], open_ms: int) -> None:
        """The XREAD of each feed's next bar: the ones that are bar ``open_ms``, in one write per
        matrix (one for every feed held together)."""
        feeds: list[Feed] = []
        flat: list[bytes] = []
        stamp = f"{open_ms}-".encode()
        for key, entries in reply or []:
            feed = nexts[as_text(key)]
            entry_id, fields = entries[0]
            if not entry_id.startswith(stamp):
                continue  # bar open_ms is not in Redis (the next one is): not ready
            try:
                flat.extend(_row(fields))
            except KeyError:
                log.warning("bar %s of %s has no %s", open_ms, feed, [n for n in _FIELDS if n not in fields])
                continue
            feeds.append(feed)
        self.bars_read += len(feeds)
        if not feeds:
            return
        self._append(feeds, open_ms, np.array(flat, dtype=np.float64).reshape(len(feeds), len(_FIELDS)).T)

    def _append(self, feeds: Sequence[Feed], open_ms: int, values: FloatArray) -> None:
        """Bar ``open_ms`` of ``feeds`` (``values``: columns x feeds), in one write per matrix."""
        apart = self._apart
        if not apart:
            self.matrix.append(feeds, open_ms, values)
            return
        together = [j for j, feed in enumerate(feeds) if feed not in apart]
        if together:
            self.matrix.append([feeds[j] for j in together], open_ms, values[:, together])
        for j, feed in enumerate(feeds):
            if feed in apart:
                apart[feed].append([feed], open_ms, values[:, j:j + 1])

    def _write(self, matrix: BarMatrix, feed: Feed, entries: Sequence[_Entry], *, continues: bool) -> None:
        """XRANGE entries (oldest first) of one feed into ``matrix``."""
        parsed = _parse(feed, entries)
        if parsed is None:
            return
        times, values = parsed
        self.bars_read += len(times)
        matrix.write(feed, times, values, continues=continues)


def _carried(fields: Mapping[bytes, bytes] | None) -> list[bytes] | None:
    """The bar values an event carries (``EVENT_BAR_FIELDS``, volcast/bar.py), as a bar read from
    Redis gives them; None when it carries none (an older streamer, a revision, a restored bar)."""
    if fields is None:
        return None
    try:
        return _row(fields)
    except KeyError:
        return None


def _row(fields: Mapping[bytes, bytes]) -> list[bytes]:
    """A bar's values in ``_FIELDS`` order (an empty one unknown); KeyError when one is missing."""
    return [fields[name] or _UNKNOWN for name in _FIELDS]


def _held(matrix: BarMatrix, feed: Feed) -> int:
    last = matrix.last_ms(feed)
    assert last is not None
    return last


def _parse(feed: Feed, entries: Sequence[_Entry]) -> tuple[npt.NDArray[np.int64], FloatArray] | None:
    times: list[int] = []
    flat: list[bytes] = []
    for entry_id, fields in entries:
        try:
            row = _row(fields)
        except KeyError:
            log.warning("skipping bar %r of %s: fields missing", entry_id, feed)
            continue
        times.append(int(entry_id.split(b"-", 1)[0]))
        flat.extend(row)
    if not times:
        return None
    return np.array(times, dtype=np.int64), np.array(flat, dtype=np.float64).reshape(len(times), len(_FIELDS)).T
