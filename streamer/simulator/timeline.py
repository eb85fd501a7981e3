"""The order and the timestamps in which the tapes are replayed.

Timestamps are moved by whole days only (one shift per tape), never scaled, so every trade keeps
its UTC time of day and its bar: bars built from the replayed stream equal bars built offline
from the file, shifted by the same days. Each loop moves everything ``period_ms`` (whole days,
past the last trade) further and the ids by each tape's id span, so ids stay unique and
consecutive.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from streamer.simulator.tape import Tape

DAY_MS = 86_400_000


def day_shift_ms(first_ms: int, now_ms: int) -> int:
    """Whole days that bring ``first_ms`` into the last day up to ``now_ms``: (now - 1 day, now]."""
    return ((now_ms - first_ms) // DAY_MS) * DAY_MS


def loop_period_ms(first_ms: int, last_ms: int) -> int:
    """Whole days from one loop to the next: the smallest that puts the next start after the last trade."""
    return ((last_ms - first_ms) // DAY_MS + 1) * DAY_MS


@dataclass(frozen=True, slots=True)
class Timeline:
    tapes: tuple[Tape, ...]
    shifts_ms: tuple[int, ...]
    """Per tape: the whole days its timestamps move in the first pass."""
    order: tuple[tuple[int, int], ...]
    """(tape index, trade index) in replay order: by replayed time, then tape, then id."""
    first_ms: int
    """Replayed timestamp of the first trade (first pass)."""
    last_ms: int
    period_ms: int

    @classmethod
    def build(cls, tapes: Sequence[Tape], shifts_ms: Sequence[int]) -> Timeline:
        if len(shifts_ms) != len(tapes):
            raise ValueError("one shift per tape")

        def keyed(ti: int) -> list[tuple[int, int, int, int]]:
            shift = shifts_ms[ti]
            return [(t.timestamp_ms + shift, ti, t.trade_id, k) for k, t in enumerate(tapes[ti].trades)]

        merged = heapq.merge(*(keyed(ti) for ti in range(len(tapes))))
        order = tuple((ti, k) for _, ti, _, k in merged)
        first = min(t.trades[0].timestamp_ms + s for t, s in zip(tapes, shifts_ms, strict=True))
        last = max(t.trades[-1].timestamp_ms + s for t, s in zip(tapes, shifts_ms, strict=True))
        return cls(tuple(tapes), tuple(shifts_ms), order, first, last, loop_period_ms(first, last))

    @classmethod
    def rebased(cls, tapes: Sequence[Tape], now_ms: int) -> Timeline:
        """Each tape moved by its own whole days so that its first trade falls in the day before
        ``now_ms``: recordings of different dates play side by side, as live symbols do."""
        return cls.build(tapes, [day_shift_ms(t.trades[0].timestamp_ms, now_ms) for t in tapes])

    def __len__(self) -> int:
        return len(self.order)

    def offset_ms(self, tape_index: int, loop: int) -> int:
        """What to add to tape ``tape_index``'s recorded timestamps in pass ``loop``."""
        return self.shifts_ms[tape_index] + loop * self.period_ms

    def timestamp(self, loop: int, index: int) -> int:
        ti, k = self.order[index]
        return self.tapes[ti].trades[k].timestamp_ms + self.shifts_ms[ti] + loop * self.period_ms
