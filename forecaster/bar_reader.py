"""The last ``look_back`` bars of every feed, kept in memory and topped up from Redis.

Reading and parsing 1000 x 60 bars from Redis at every boundary costs more than the whole
latency budget, so each feed's recent bars stay here as numpy columns and a boundary reads only
the bars this process has not seen yet (usually one per feed), all feeds in one pipeline.
Several workers share the events of one consumer group, so a feed may have moved on by more than
one bar since this process last saw it: the read covers every missing bar, up to ``look_back``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis

from forecaster.frame import OPTIONAL_COLUMNS, BarFrame
from volcast.keys import Feed, RedisKeys

# Row order of the value matrix; BarFrame's float columns.
_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume", "trades", "buy_volume")
_FIELDS: tuple[bytes, ...] = tuple(name.encode() for name in _COLUMNS)
_CLOSE = _COLUMNS.index("close")


@dataclass(slots=True)
class _Window:
    """One feed's newest bars: ``times`` (n,) and ``values`` (len(_COLUMNS), n), oldest first."""

    times: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]

    @property
    def last_ms(self) -> int:
        return int(self.times[-1])


@dataclass(frozen=True, slots=True)
class History:
    """The bars a prediction is made from. ``latest`` is False for a replayed old event: the feed
    has already moved past ``frame``'s last bar, so its prediction must not replace a newer one."""

    frame: BarFrame
    latest: bool

    @property
    def last_volume(self) -> float:
        return float(self.frame.volume[-1])


class BarHistories:
    """Per-feed windows of the last ``look_back`` closed bars."""

    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, look_back: int) -> None:
        self._redis = redis
        self._keys = keys
        self._look_back = look_back
        self._windows: dict[Feed, _Window] = {}
        self.bars_read = 0

    @property
    def look_back(self) -> int:
        return self._look_back

    def set_look_back(self, look_back: int) -> None:
        """A model with a longer look_back needs older bars than kept: start the windows afresh."""
        if look_back > self._look_back:
            self._windows.clear()
        self._look_back = look_back

    def forget(self, feed: Feed) -> None:
        self._windows.pop(feed, None)

    async def at(self, wanted: Sequence[tuple[Feed, int]]) -> dict[Feed, History]:
        """The history ending with bar ``open_time_ms`` of each feed, reading only what is missing.

        A feed whose bar is not in Redis (trimmed, or an event without its bar) is left out.
        """
        reads: list[tuple[Feed, int, bool]] = []  # feed, bar time, keep the result as its window
        pipe = self._redis.pipeline(transaction=False)
        for feed, open_ms in wanted:
            window = self._windows.get(feed)
            if window is not None and window.last_ms == open_ms:
                continue
            if window is not None and window.last_ms < open_ms:
                pipe.xrevrange(self._keys.bars(feed), max=str(open_ms), min=str(window.last_ms + 1),
                               count=self._look_back)
                reads.append((feed, open_ms, True))
            elif window is None:
                pipe.xrevrange(self._keys.bars(feed), max=str(open_ms), min="-", count=self._look_back)
                reads.append((feed, open_ms, True))
            else:
                pipe.xrevrange(self._keys.bars(feed), max=str(open_ms), min="-", count=self._look_back)
                reads.append((feed, open_ms, False))
        replies: list[Any] = await pipe.execute() if reads else []
        one_off: dict[Feed, _Window] = {}
        for (feed, _open_ms, keep), entries in zip(reads, replies, strict=True):
            self.bars_read += len(entries)
            fresh = _parse(entries)
            if fresh is None:
                continue
            if keep:
                old = self._windows.get(feed)
                self._windows[feed] = self._joined(old, fresh)
            else:
                one_off[feed] = fresh
        out: dict[Feed, History] = {}
        for feed, open_ms in wanted:
            if feed in one_off:
                window, latest = one_off[feed], False
            elif feed in self._windows:
                window, latest = self._windows[feed], True
            else:
                continue
            if window.last_ms != open_ms:
                continue
            out[feed] = History(_frame(window, feed.interval_ms), latest)
        return out

    def _joined(self, old: _Window | None, fresh: _Window) -> _Window:
        if old is None or fresh.times[0] <= old.last_ms:
            times, values = fresh.times, fresh.values
        else:
            times = np.concatenate([old.times, fresh.times])
            values = np.concatenate([old.values, fresh.values], axis=1)
        start = max(0, len(times) - self._look_back)
        # Copies, so the window does not pin the larger concatenated arrays.
        return _Window(times[start:].copy(), values[:, start:].copy())


def _parse(entries: Sequence[tuple[bytes, Mapping[bytes, bytes]]]) -> _Window | None:
    """XREVRANGE entries (newest first) to a window, oldest first."""
    n = len(entries)
    if n == 0:
        return None
    times = np.empty(n, dtype=np.int64)
    values = np.empty((len(_COLUMNS), n), dtype=np.float64)
    for i, (entry_id, fields) in enumerate(reversed(entries)):
        times[i] = int(entry_id.split(b"-", 1)[0])
        for j, name in enumerate(_FIELDS):
            values[j, i] = float(fields[name])
    return _Window(times, values)


def _frame(window: _Window, interval_ms: int) -> BarFrame:
    times, values = window.times, window.values
    steps = np.diff(times)
    if len(times) > 1 and np.any(steps != interval_ms):
        times, values = _fill(times, values, interval_ms)
    cols = {name: values[j] for j, name in enumerate(_COLUMNS)}
    return BarFrame(interval_ms=interval_ms, open_time_ms=times, known=frozenset(OPTIONAL_COLUMNS), **cols)


def _fill(times: npt.NDArray[np.int64], values: npt.NDArray[np.float64],
          interval_ms: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    # The streamer writes zero-volume bars, so a hole means trimmed or hand-written data: fill it the
    # way the streamer would (no volume, prices carried from the last close) rather than fail.
    slots = (times - times[0]) // interval_ms
    total = int(slots[-1]) + 1
    full_times = times[0] + np.arange(total, dtype=np.int64) * interval_ms
    present = np.zeros(total, dtype=bool)
    present[slots] = True
    last = np.maximum.accumulate(np.where(present, np.arange(total), 0))
    carried = values[_CLOSE][np.searchsorted(slots, last)]
    full = np.zeros((len(_COLUMNS), total))
    for j in range(len(_COLUMNS)):
        if j <= _CLOSE:
            full[j] = carried
        full[j][slots] = values[j]
    return full_times, full
