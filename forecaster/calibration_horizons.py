"""Calibrated bands of a multi-horizon forecast: every coming bar and cumulative window.

Target j of a forecast (forecaster/horizons.py: the bar h after the next one, or the sum of the
next k bars) is calibrator horizon j (forecaster/calibration.py), so the next bar is horizon 0
as for a next-bar-only model. A target is realised only when the last bar of its window closes,
``delay = offset + bars`` boundaries after the forecast was made; until then the raw and the
published log1p band of every target is kept in a ring of ``span + 1`` boundaries per feed
(float32: 4 x 61 x 63 numbers a feed at 1-minute bars, 61 kB, 61 MB at 1000 feeds), with the
feed's recent bar volumes for the windows' sums.

What is published: a forecast's horizons carry calibrated bands only when every target of it is
past its warm-up (``horizons_calibrated`` in the payload), else the model's own, all of them: the
farthest target starts learning ``span`` bars after the next bar does. The next bar's own band
(``quantiles``) follows the next bar's warm-up alone (calibration_store.py).

What is learnt here: every target but the next bar (horizon 0 learns from the prediction records,
which another worker or a restart reads back from Redis). The ring is this process's memory: a
restart forgets the forecasts not yet realised (at most ``span`` bars of learning), and in a group
of workers each learns the targets of the forecasts it made and whose windows it sees close.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from forecaster.calibration import HIGH, LOW, BandCalibrator
from forecaster.frame import FloatArray, IntArray
from forecaster.horizon_block import HorizonBlock, round_significant
from forecaster.horizons import Horizons
from forecaster.payload import HorizonValues
from forecaster.predictor import Forecast

MID = 0.5


class HorizonBands:
    """The calibrated bands of every target, and their learning, for the rows of ``calibrator``."""

    def __init__(self, calibrator: BandCalibrator, spec: Horizons, interval_ms: int) -> None:
        targets = spec.targets
        if calibrator.horizons != len(targets):
            raise ValueError(f"a calibrator of {calibrator.horizons} horizons for {len(targets)} targets")
        self.calibrator = calibrator
        self.spec = spec
        self.interval_ms = interval_ms
        self.delays: IntArray = np.array([o + k for o, k in targets], dtype=np.int64)
        self.windows: IntArray = np.array([k for _, k in targets], dtype=np.int64)
        self.ring = int(self.delays.max()) + 1
        t = len(targets)
        self._js: IntArray = np.arange(t, dtype=np.int64)
        self._log_k: FloatArray = np.log(self.windows.astype(np.float64))
        self.issued: IntArray = np.zeros((0, self.ring), dtype=np.int64)
        self.raw: npt.NDArray[np.float32] = np.zeros((0, self.ring, 2, t), dtype=np.float32)
        self.published: npt.NDArray[np.float32] = np.zeros((0, self.ring, 2, t), dtype=np.float32)
        self.volume_ms: IntArray = np.zeros((0, self.ring), dtype=np.int64)
        self.volume: FloatArray = np.zeros((0, self.ring))
        self._bars: list[tuple[int, int, float]] = []
        self.calibrated = 0  # forecasts whose horizons were published calibrated

    def _room(self) -> None:
        rows = len(self.calibrator.to_ms)
        have = len(self.issued)
        if have >= rows:
            return
        grow = rows - have
        t = len(self._js)
        self.issued = np.concatenate([self.issued, np.full((grow, self.ring), -1, dtype=np.int64)])
        self.raw = np.concatenate([self.raw, np.zeros((grow, self.ring, 2, t), dtype=np.float32)])
        self.published = np.concatenate([self.published, np.zeros((grow, self.ring, 2, t), dtype=np.float32)])
        self.volume_ms = np.concatenate([self.volume_ms, np.full((grow, self.ring), -1, dtype=np.int64)])
        self.volume = np.concatenate([self.volume, np.zeros((grow, self.ring))])

    def _slot(self, ms: IntArray | int) -> IntArray:
        return np.asarray((np.asarray(ms) // self.interval_ms) % self.ring, dtype=np.int64)

    # -- at the hand-over ---------------------------------------------------------------------

    def publish(self, rows: IntArray, forecasts: Sequence[Forecast], issued_ms: int
                ) -> list[HorizonValues | None]:
        """Each forecast's horizons with calibrated bands (None: publish its own), and its raw and
        published bands kept until its targets are realised. ``forecasts`` all have horizons
        with a 0.1/0.5/0.9 band of every target of ``spec``."""
        self._room()
        bars, labels = self.spec.bars, [label for label, _ in self.spec.sums]
        found = self._block_of(forecasts)
        block: HorizonBlock | None = None
        at: IntArray = np.zeros(0, dtype=np.int64)
        columns: list[int] = []
        if found is not None:  # the chunk's arrays as they are (the same numbers as below)
            block, at = found
            assert block.quantiles is not None
            columns = [block.levels.index(q) for q in (LOW, MID, HIGH)]
            values = block.quantiles[at][:, columns, :]
        else:
            values = np.array([[[*hv.quantiles[q][:bars], *(hv.sums[x][1][q] for x in labels)]
                                for q in (LOW, MID, HIGH)]
                               for hv in (fc.horizons for fc in forecasts) if hv is not None])
        if values.shape != (len(forecasts), 3, len(self._js)):
            return [None] * len(forecasts)
        with np.errstate(invalid="ignore", divide="ignore"):
            logs = np.log1p(np.maximum(values, 0.0))
            bound = np.log1p(np.array([fc.bound for fc in forecasts]))[:, None] + self._log_k[None, :]
        lows, mids, highs = logs[:, 0], logs[:, 1], logs[:, 2]
        grid_rows = np.broadcast_to(rows[:, None], lows.shape)
        grid_js = np.broadcast_to(self._js[None, :], lows.shape)
        lo, hi, ok = self.calibrator.band(grid_rows, grid_js, lows, highs, mids, bound)
        every: npt.NDArray[np.bool_] = np.asarray(ok.all(axis=1))
        lo = np.where(every[:, None], lo, lows)
        hi = np.where(every[:, None], hi, highs)
        slot = int(self._slot(issued_ms))
        self.issued[rows, slot] = issued_ms
        self.raw[rows, slot, 0], self.raw[rows, slot, 1] = lows, highs
        self.published[rows, slot, 0], self.published[rows, slot, 1] = lo, hi
        out: list[HorizonValues | None] = [None] * len(forecasts)
        picked = np.flatnonzero(every)
        if not len(picked):
            return out
        if block is not None and block.quantiles is not None:
            # A block of the calibrated rows: their JSON made at once too (forecaster/horizon_block.py).
            banded = block.quantiles[at[picked]]  # a copy (fancy indexing)
            banded[:, columns[0], :] = round_significant(np.expm1(lo[picked]))
            banded[:, columns[2], :] = round_significant(np.expm1(hi[picked]))
            for i, values_of in zip(picked.tolist(), HorizonBlock(block.volume[at[picked]], banded, block.levels,
                                                                  self.spec).rows(), strict=True):
                out[i] = values_of
            self.calibrated += len(picked)
            return out
        low = round_significant(np.expm1(lo[picked])).tolist()
        high = round_significant(np.expm1(hi[picked])).tolist()
        for n, i in enumerate(picked.tolist()):
            hv = forecasts[i].horizons
            assert hv is not None
            quantiles = dict(hv.quantiles)
            quantiles[LOW], quantiles[HIGH] = low[n][:bars], high[n][:bars]
            sums = {}
            for s, label in enumerate(labels):
                volume, qs = hv.sums[label]
                window = dict(qs)
                window[LOW], window[HIGH] = low[n][bars + s], high[n][bars + s]
                sums[label] = (volume, window)
            out[i] = HorizonValues(hv.volume, quantiles, sums)
        self.calibrated += len(picked)
        return out

    def _block_of(self, forecasts: Sequence[Forecast]) -> tuple[HorizonBlock, IntArray] | None:
        """The one ``HorizonBlock`` every forecast's horizons are rows of, with its 0.1/0.5/0.9
        levels and this spec's targets, and their rows; None otherwise (use the values)."""
        found = [None if fc.horizons is None else fc.horizons.of_block() for fc in forecasts]
        first = found[0] if found else None
        if first is None or not isinstance(first[0], HorizonBlock):
            return None
        block = first[0]
        if (block.quantiles is None or any(q not in block.levels for q in (LOW, MID, HIGH))
                or block.bars != self.spec.bars or block.labels != [label for label, _ in self.spec.sums]
                or any(f is None or f[0] is not block for f in found)):
            return None
        return block, np.array([f[1] for f in found if f is not None], dtype=np.int64)

    # -- in the bookkeeping -------------------------------------------------------------------

    def bar(self, row: int, open_ms: int, volume: float) -> None:
        """Queue a closed bar of a row (its volume), for ``learn``."""
        self._bars.append((row, open_ms, volume))

    def learn(self) -> list[int]:
        """Fold in every target realised by the queued bars; returns the rows that learnt."""
        queued, self._bars = self._bars, []
        if not queued:
            return []
        self._room()
        rows = np.array([b[0] for b in queued], dtype=np.int64)
        times = np.array([b[1] for b in queued], dtype=np.int64)
        volumes = np.array([b[2] for b in queued])
        self.volume_ms[rows, self._slot(times)] = times
        self.volume[rows, self._slot(times)] = volumes
        step = self.interval_ms
        # Target j of the forecast made at boundary t - delay_j closes with bar t; the next bar
        # (horizon 0) is learnt from the prediction records instead.
        js = self._js[1:]
        made = times[:, None] - self.delays[None, 1:] * step
        made_slot = self._slot(made)
        grid_rows = np.broadcast_to(rows[:, None], made.shape)
        known = self.issued[grid_rows, made_slot] == made
        # The realised volume of each target's window: its k newest bars, all of them known.
        realised = np.zeros(made.shape)
        complete = np.ones(made.shape, dtype=np.bool_)
        for k in np.unique(self.windows[1:]).tolist():
            cols = np.flatnonzero(self.windows[1:] == k)
            back = times[:, None] - np.arange(k)[None, :] * step
            held = self.volume_ms[rows[:, None], self._slot(back)] == back
            total = np.where(held, self.volume[rows[:, None], self._slot(back)], 0.0).sum(axis=1)
            realised[:, cols] = total[:, None]
            complete[:, cols] = held.all(axis=1)[:, None]
        due = known & complete
        if not due.any():
            return []
        r, c = np.nonzero(due)
        which = js[c]
        row_of = rows[r]
        slot = made_slot[r, c]
        raw_lo = self.raw[row_of, slot, 0, which].astype(np.float64)
        raw_hi = self.raw[row_of, slot, 1, which].astype(np.float64)
        pub_lo = self.published[row_of, slot, 0, which].astype(np.float64)
        pub_hi = self.published[row_of, slot, 1, which].astype(np.float64)
        with np.errstate(invalid="ignore"):
            actual = np.log1p(np.maximum(realised[r, c], 0.0))
        # The published band was rounded to float32 here: count a bar on its edge as inside.
        slack = 1e-6 * np.maximum(np.abs(actual), 1.0)
        self.calibrator.count(row_of, which, (actual >= pub_lo - slack) & (actual <= pub_hi + slack))
        self.calibrator.update(row_of, which, raw_lo, raw_hi, actual, times[r], published=(pub_lo, pub_hi))
        return sorted(set(row_of.tolist()))


def has_band(forecast: Forecast, spec: Horizons) -> bool:
    """Whether the forecast's horizons hold a finite-shaped 0.1/0.5/0.9 band of every target."""
    hv = forecast.horizons
    if hv is None:
        return False
    made = hv.of_block()
    if made is not None and isinstance(made[0], HorizonBlock):  # the same questions, of its block
        block = made[0]
        return (block.bars == spec.bars and block.quantiles is not None
                and all(q in block.levels for q in (LOW, MID, HIGH))
                and all(label in block.labels for label, _ in spec.sums) and not math.isnan(forecast.bound))
    if len(hv.volume) != spec.bars or any(q not in hv.quantiles for q in (LOW, MID, HIGH)):
        return False
    return all(label in hv.sums for label, _ in spec.sums) and not math.isnan(forecast.bound)
