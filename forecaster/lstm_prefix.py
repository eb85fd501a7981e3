"""The LSTM's state over the start of every feed's next window, computed between two boundaries.

At boundary t the default model reads each feed's last ``look_back`` bars; at boundary t+1 the
window has moved on by one bar, so all its bars but the newest are bars the worker held at t.
The worker runs the network over those bars once boundary t is published (``LstmModel.prepare_next``),
and at t+1 the LSTM takes one step per feed from that state (``VolumeLSTM.resume``) instead of
``look_back`` steps: the boundary's forward pass no longer grows with the window.

A prepared state is used only where the raw bars it was computed from are, value for value, the
bars that the window holds now (``Prefix.match``): a feed read afresh from Redis, one that another
worker of the group served meanwhile, a bar written again, a state of another model: each gets
its whole window instead. So a forecast is the one the whole window gives, with or without a
prepared state (up to the order of float sums inside torch's kernels; the tests compare them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from forecaster.features import Batch
from forecaster.frame import FloatArray, IntArray
from forecaster.networks import LstmState

PLANES: tuple[str, ...] = ("open_time_ms", "high", "low", "close", "volume", "trades", "buy_volume")
"""Every bar field a per-bar feature is computed from."""


def window_values(batch: Batch, start: int, stop: int) -> FloatArray:
    """``(symbols, len(PLANES), stop - start)``: the raw bars ``start:stop`` of every history.

    Open times are exact as floats (milliseconds since 1970 are far below 2**53).
    """
    return np.stack([np.asarray(getattr(batch, name)[:, start:stop], dtype=np.float64) for name in PLANES], axis=1)


@dataclass(frozen=True, slots=True)
class Prefix:
    """Prepared LSTM states (one per ensemble member) and the bars each was computed from.

    ``bars[i]`` are the ``look_back`` bars before the next one of feed key ``keys[i]``: the first
    gives only its close (the second bar's return); the states ran over the other ones.
    """

    rows: dict[str, int]
    bars: FloatArray
    states: list[LstmState]

    @classmethod
    def of(cls, keys: Sequence[str], bars: FloatArray, states: list[LstmState]) -> Prefix:
        return cls({key: i for i, key in enumerate(keys)}, bars, states)

    def match(self, keys: Sequence[str], bars: FloatArray) -> tuple[IntArray, npt.NDArray[np.bool_]]:
        """Each key's row here (-1: none) and whether its state was computed from exactly ``bars[i]``."""
        rows = np.fromiter((self.rows.get(key, -1) for key in keys), dtype=np.int64, count=len(keys))
        known = np.flatnonzero(rows >= 0)
        hit = np.zeros(len(keys), dtype=bool)
        if len(known):
            # NaN never equals itself: a bar with one is recomputed, never wrongly reused.
            hit[known] = (self.bars[rows[known]] == bars[known]).all(axis=(1, 2))
        return rows, hit
