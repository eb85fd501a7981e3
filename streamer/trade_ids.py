"""The trade ids of one bar, kept as sorted runs of consecutive ids: the aggregator's duplicate memory.

A bar must remember every id it holds, so that a trade sent twice is counted once. A Python
``set[int]`` costs about 60 to 90 bytes per id (the int object plus its hash-table slot): with 1-hour
bars on 100 busy symbols that is hundreds of MB held only to answer "seen before?". Exchanges
whose trade ids are consecutive (Binance and most others) give a bar one run, however many trades
it holds; sparse ids cost 16 bytes per run (two machine integers), still several times less than a
set. Ids arrive mostly in increasing order, so the common case is extending the last run.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import MutableSequence

# Signed 64-bit runs; an id outside that range (no exchange we know of) switches to Python ints.
_TYPECODE = "q"


class TradeIdSet:
    """A set of integer ids stored as disjoint, sorted, inclusive runs ``[start, end]``."""

    __slots__ = ("_ends", "_starts")

    def __init__(self) -> None:
        self._starts: MutableSequence[int] = array(_TYPECODE)
        self._ends: MutableSequence[int] = array(_TYPECODE)

    def __len__(self) -> int:
        return sum(end - start + 1 for start, end in zip(self._starts, self._ends, strict=True))

    def __contains__(self, trade_id: object) -> bool:
        if not isinstance(trade_id, int):
            return False
        i = bisect_right(self._starts, trade_id) - 1
        return i >= 0 and trade_id <= self._ends[i]

    @property
    def runs(self) -> int:
        return len(self._starts)

    def add(self, trade_id: int) -> bool:
        """Remember ``trade_id``; False if it was already there."""
        ends = self._ends
        try:
            if ends:
                last = ends[-1]
                if trade_id == last + 1:  # the next id in order: the common case
                    ends[-1] = trade_id
                    return True
                if trade_id <= last:
                    return self._insert(trade_id)
            self._starts.append(trade_id)
            ends.append(trade_id)
        except OverflowError:  # beyond 64 bits, before any change: go on with Python ints
            self._starts, self._ends = list(self._starts), list(ends)
            return self.add(trade_id)
        return True

    def _insert(self, trade_id: int) -> bool:
        """An id at or below the last run: inside a run (a duplicate), next to one, or a run of its own."""
        starts, ends = self._starts, self._ends
        i = bisect_right(starts, trade_id) - 1  # the run starting at or before trade_id
        if i >= 0 and trade_id <= ends[i]:
            return False
        joins_left = i >= 0 and ends[i] == trade_id - 1
        joins_right = starts[i + 1] == trade_id + 1  # a run after i exists: trade_id < the last end
        if joins_left and joins_right:  # fills the one-id hole between two runs
            ends[i] = ends[i + 1]
            del starts[i + 1]
            del ends[i + 1]
        elif joins_left:
            ends[i] = trade_id
        elif joins_right:
            starts[i + 1] = trade_id
        else:
            starts.insert(i + 1, trade_id)
            ends.insert(i + 1, trade_id)
        return True
