"""Calibrated 80% bands: online conformal correction of the model's 0.1 and 0.9 quantiles.

The model's quantile heads are fitted once, on the training span; on the bars that follow their
0.1-0.9 band covered 0.72 to 0.84 of the bars (nominal 0.80). Each side of the band is corrected
on its own, per feed and per horizon, in log1p space (where the models work and errors are free
of the feed's units), from the feed's own realised bars:

    published low  = raw low  - c_low        published high = raw high + c_high

and after each realised bar ``y`` (all in log1p):

    c_low  += step * (1[raw low - y > c_low]  - 0.1)      (the bar fell below the band)
    c_high += step * (1[y - raw high > c_high] - 0.1)     (the bar fell above the band)

This is adaptive conformal inference (Gibbs & Candès 2021) in its quantile-tracking form
(Angelopoulos, Candès & Tibshirani 2023, "Conformal PID control"): the correction itself is
moved by the miss indicator instead of the miscoverage level that then picks a quantile from a
window of scores. Whatever the sequence of errors (heavy tails, drift, a new model), the share
of bars below the band tends to 0.1 and above it to 0.1, within (range of c + step) / (step * T)
after T bars. The state is two floats and a count per feed and horizon, so 1000 feeds with 60
horizons hold and write 120,000 numbers, not a window of residuals each. docs/accuracy.md
("Calibrated bands") says why this method and this step.

Warm-up: a horizon's band is published raw (``calibrated`` false) until it has ``warm_up``
realised bars; the correction learns from the first one on. The published band is then kept
sane: its low end is at least 0 and at most the median, its high end at least the median and
at most the output guard's bound (forecaster/guard.py), which the worker checks again.

Everything is vectorised over feeds: a feed is a row of a few arrays (``rows``), and a
boundary's band and update are a handful of numpy operations for all of them.
"""

from __future__ import annotations

import base64
from collections.abc import Hashable, Mapping, Sequence
from typing import cast

import numpy as np
import numpy.typing as npt

from forecaster.frame import FloatArray, IntArray
from volcast.calibration_state import BYTES_PER_HORIZON, FLOAT_ROWS, PACKED_ROWS, unpack_state

LOW = 0.1
"""The quantile whose level sets the band's low end (the share of bars meant to fall below it)."""
HIGH = 0.9
"""... and its high end (1 - HIGH of the bars are meant to fall above it)."""
STEP = 0.02
"""How far one miss moves a correction, in log1p volume (e^0.02: 2%). Chosen on the training
spans' last quarter of three dev files (docs/accuracy.md): 0.01 to 0.02 gave the best interval
score; 0.02 keeps each day's coverage within 0.79 to 0.81 there, and follows a change of regime
(a new model, a quieter month) within a few hundred bars."""
WINDOW_POWER = 0.5
"""A cumulative window of k bars moves its corrections by STEP / k**WINDOW_POWER per realised
window, not STEP: consecutive windows share k - 1 of their k bars, so their misses come in runs
of up to k, and the correction, which learns a window only when it closes, overshoots by about
step x k before the first miss's feedback arrives (the 1h band went 42-61% wider than raw on the
long FIL files). The bound on the miss rate holds for any fixed step. Chosen on the last quarter
of the training spans of the 10 dev files, among 0 (STEP for every target), 0.5 and 1
(docs/accuracy.md, "A step per window")."""
WARM_UP = 60
"""Realised bars of a horizon before its band is published calibrated (an hour of 1-minute bars):
the first corrections are single steps, too few to say more than the model's own band."""
LIMIT = 10.0
"""The correction never goes past +-LIMIT (e^10 in volume): keeps the state bounded whatever
the errors (a feed whose volume jumps by a factor of a million for a while)."""

BoolArray = npt.NDArray[np.bool_]


class BandCalibrator:
    """Per key (a feed) and horizon index (0: the next bar): the corrections and their counts."""

    def __init__(self, horizons: int = 1, *, step: float = STEP, warm_up: int = WARM_UP,
                 low: float = LOW, high: float = HIGH, windows: Sequence[int] | IntArray | None = None,
                 window_power: float = WINDOW_POWER) -> None:
        if horizons < 1:
            raise ValueError("a calibrator needs at least one horizon")
        self.horizons = horizons
        self.step = step
        self.window_power = window_power
        # Each horizon's own step: ``step`` over its window's bars to the ``window_power`` (a
        # single bar, or no windows given: ``step``).
        self.steps: FloatArray = window_steps(horizons, step, windows, window_power)
        self.warm_up = warm_up
        self.low = low
        self.high = high
        self._rows: dict[Hashable, int] = {}
        self.keys: list[Hashable] = []  # row -> key
        self.c_low: FloatArray = np.zeros((0, horizons))
        self.c_high: FloatArray = np.zeros((0, horizons))
        self.n: IntArray = np.zeros((0, horizons), dtype=np.int64)
        # The newest realised bar folded in per horizon (-1: none): a bar seen again (an event
        # handled again after a restart) is not learnt twice.
        self.to_ms: IntArray = np.zeros((0, horizons), dtype=np.int64)
        # Live coverage per horizon (``count``): realised bars whose published band was known, and
        # those inside it.
        self.banded: IntArray = np.zeros((0, horizons), dtype=np.int64)
        self.covered: IntArray = np.zeros((0, horizons), dtype=np.int64)

    # -- rows -------------------------------------------------------------------------------

    def __contains__(self, key: Hashable) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self, keys: Sequence[Hashable]) -> IntArray:
        """Each key's row; a key not seen before gets a fresh one (no correction, no count)."""
        table = self._rows
        out = [table.get(k, -1) for k in keys]
        if -1 in out:
            for i, k in enumerate(keys):
                if out[i] == -1:
                    out[i] = table.get(k, -1)
                    if out[i] == -1:
                        out[i] = self._new_row(k)
        return np.array(out, dtype=np.int64)

    def _new_row(self, key: Hashable) -> int:
        row = len(self._rows)
        if row == len(self.to_ms):  # grow by half again: a start with 1000 feeds grows a few times
            grow = max(16, row // 2)
            self.c_low = np.concatenate([self.c_low, np.zeros((grow, self.horizons))])
            self.c_high = np.concatenate([self.c_high, np.zeros((grow, self.horizons))])
            self.n = np.concatenate([self.n, np.zeros((grow, self.horizons), dtype=np.int64)])
            self.to_ms = np.concatenate([self.to_ms, np.full((grow, self.horizons), -1, dtype=np.int64)])
            self.banded = np.concatenate([self.banded, np.zeros((grow, self.horizons), dtype=np.int64)])
            self.covered = np.concatenate([self.covered, np.zeros((grow, self.horizons), dtype=np.int64)])
        self._rows[key] = row
        self.keys.append(key)
        self.c_low[row] = 0.0
        self.c_high[row] = 0.0
        self.n[row] = 0
        self.to_ms[row] = -1
        self.banded[row] = 0
        self.covered[row] = 0
        return row

    # -- the band -----------------------------------------------------------------------------

    def band(self, rows: IntArray, horizon: int | IntArray, low: FloatArray, high: FloatArray, mid: FloatArray,
             bound: FloatArray) -> tuple[FloatArray, FloatArray, BoolArray]:
        """The published band of each row from the model's log1p ``low``, ``high`` and median
        ``mid``; ``bound``: the log1p upper bound the output guard allows; ``horizon``: one index
        for all rows, or one per row (the same row may then appear once per horizon). Returns (low, high,
        calibrated): rows still warming up, or with a value that is not finite, keep the raw band."""
        c_low = self.c_low[rows, horizon]
        c_high = self.c_high[rows, horizon]
        lo = np.minimum(np.maximum(low - c_low, 0.0), mid)
        hi = np.minimum(np.maximum(high + c_high, mid), bound)
        calibrated: BoolArray = (self.n[rows, horizon] >= self.warm_up) & np.isfinite(lo) & np.isfinite(hi)
        calibrated &= lo <= hi
        return np.where(calibrated, lo, low), np.where(calibrated, hi, high), calibrated

    # -- learning -------------------------------------------------------------------------------

    def update(self, rows: IntArray, horizon: int | IntArray, low: FloatArray, high: FloatArray,
               actual: FloatArray, open_ms: IntArray | int | None = None,
               published: tuple[FloatArray, FloatArray] | None = None) -> int:
        """Fold in realised bars: the model's raw log1p band (``low``, ``high``) and what
        happened (``actual``, log1p), one per row; a row may appear more than once (applied in
        order). Rows with a value that is not finite are skipped, and so are bars ``open_ms`` not
        newer than the last one the row's horizon learnt from. Returns how many were used.

        ``published``: the (low, high) log1p band that was published for each bar. A miss is then
        a bar outside it, as users saw it, rather than outside the raw band moved by today's
        correction: the two differ when the correction moved between the forecast and its
        realisation (a target realised an hour later), and only misses of the band that was
        published keep the guarantee (each correction's total movement is step x (misses - 0.1
        x bars), so misses of what was published cannot drift from 0.1 while it stays bounded).
        Without it (realised one bar later, the correction unchanged meanwhile) the raw band
        moved by the current correction is the published one up to the clamps."""
        rows = np.asarray(rows, dtype=np.int64)
        h = np.broadcast_to(np.asarray(horizon, dtype=np.int64), rows.shape)
        bars = np.broadcast_to(np.asarray(-1 if open_ms is None else open_ms, dtype=np.int64), rows.shape)
        ok = np.isfinite(low) & np.isfinite(high) & np.isfinite(actual)
        if published is not None:
            ok &= np.isfinite(published[0]) & np.isfinite(published[1])
        if open_ms is not None:
            ok &= bars > self.to_ms[rows, h]
        if not ok.all():
            rows, h, bars, low, high, actual = rows[ok], h[ok], bars[ok], low[ok], high[ok], actual[ok]
            if published is not None:
                published = (published[0][ok], published[1][ok])
        if not len(rows):
            return 0
        # Duplicates (two realised bars of one row at once: a backlog) need their own passes, in
        # order, as each miss is judged against the correction the previous one left.
        flat = rows * self.horizons + h
        if len(flat) > 1 and int(np.bincount(flat).max()) > 1:  # flat < rows x horizons: a small table
            for i in range(len(rows)):
                one = slice(i, i + 1)
                self.update(rows[one], h[one], low[one], high[one], actual[one], None if open_ms is None else bars[one],
                            None if published is None else (published[0][one], published[1][one]))
            return len(rows)
        c_low = self.c_low[rows, h]
        c_high = self.c_high[rows, h]
        if published is None:
            below = (low - actual) > c_low
            above = (actual - high) > c_high
        else:
            below = actual < published[0]
            above = actual > published[1]
        step = self.steps[h]
        self.c_low[rows, h] = np.clip(c_low + step * (below - self.low), -LIMIT, LIMIT)
        self.c_high[rows, h] = np.clip(c_high + step * (above - (1.0 - self.high)), -LIMIT, LIMIT)
        self.n[rows, h] += 1
        if open_ms is not None:
            self.to_ms[rows, h] = bars
        return len(rows)

    def count(self, rows: IntArray, horizon: IntArray, inside: npt.NDArray[np.bool_]) -> None:
        """Count realised bars of (row, horizon) pairs, ``inside`` their published band."""
        np.add.at(self.banded, (rows, horizon), 1)
        np.add.at(self.covered, (rows, horizon), inside.astype(np.int64))

    # -- state in Redis -------------------------------------------------------------------------

    def follows(self, key: Hashable, open_ms: int, interval_ms: int) -> bool:
        """Whether this process holds the key's state up to the bar before ``open_ms``: a state
        another worker of the group moved on since must be read back before it is updated."""
        row = self._rows.get(key)
        return row is not None and int(self.to_ms[row, 0]) == open_ms - interval_ms

    def fields(self, row: int) -> dict[str, str]:
        """The row's state as hash fields, its settings included (``flat_fields``)."""
        flat = self.flat_fields([row])[0] + self.settings_fields()
        return {cast(str, name): value.decode() if isinstance(value, bytes) else value
                for name, value in zip(flat[::2], flat[1::2], strict=True)}

    def flat_fields(self, rows: Sequence[int]) -> list[list[str | bytes]]:
        """The state of many rows as flat [name, value, ...] lists, without the settings
        (``horizons``, ``step``, ``warm_up``: written once per row by the caller).

        One horizon: ``c_low``, ``c_high``, ``n``, ``to_ms`` as text. More: the same four of
        horizon 0 as text (what ``volcast status`` shows of the next bar, and all a reader that
        knows one horizon reads), and every horizon's values ``packed`` (volcast/calibration_state.py:
        exact, and at 1000 feeds of 63 targets ~60x cheaper than their comma-separated text), last
        and as bytes (4 kB of 63 targets: the recorder sends it as a script argument of its own)."""
        picked = np.asarray(rows, dtype=np.int64)
        first = (self.c_low[picked, 0].tolist(), self.c_high[picked, 0].tolist(), self.n[picked, 0].tolist(),
                 self.to_ms[picked, 0].tolist())
        if self.horizons == 1:
            return [["c_low", repr(lo), "c_high", repr(hi), "n", str(n), "to_ms", str(t)]
                    for lo, hi, n, t in zip(*first, strict=True)]
        return [["c_low", repr(lo), "c_high", repr(hi), "n", str(n), "to_ms", str(t), "packed", state]
                for lo, hi, n, t, state in zip(*first, self.packed_ascii(picked), strict=True)]

    def packed(self, rows: IntArray) -> list[str]:
        """Each row's state in the packed form (volcast/calibration_state.py), all at once."""
        return [state.decode("ascii") for state in self.packed_ascii(rows)]

    def packed_ascii(self, rows: IntArray) -> list[bytes]:
        """``packed`` as ASCII bytes: one base64 text of the rows' bytes, cut per row (a row is
        48 x horizons bytes, a multiple of 3, so its base64 ends on a character boundary)."""
        block = np.empty((len(rows), len(PACKED_ROWS), self.horizons), dtype="<i8")
        for i, name in enumerate(PACKED_ROWS):
            values = getattr(self, name)[rows]
            block[:, i] = values.astype("<f8").view("<i8") if i < FLOAT_ROWS else values
        text = base64.b64encode(block.tobytes())
        width = 4 * BYTES_PER_HORIZON * self.horizons // 3
        return [text[i * width:(i + 1) * width] for i in range(len(rows))]

    def settings_fields(self) -> list[str]:
        """The fields of a state that do not change (flat)."""
        return ["horizons", str(self.horizons), "step", repr(self.step), "warm_up", str(self.warm_up)]

    def load(self, key: Hashable, fields: Mapping[str, str]) -> bool:
        """Replace the key's state with one read back from Redis; False (the state left as it
        was) when the fields are missing or unreadable. A state saved with fewer horizons fills
        the ones it lacks fresh; extra ones are dropped.

        Every horizon is read from the ``packed`` form, horizon 0 from the text fields, which
        every writer writes: a worker of one horizon (``calibrate_horizons: false``) leaves an
        older ``packed`` behind, whose next bar is then out of date. A state without ``packed``
        (one horizon, or written before it) or with one that cannot be read is read from the
        text fields alone (horizon 0 only, or every horizon comma-separated)."""
        text = text_state(fields)
        state = unpack_state(fields.get("packed"))
        if state is None:
            if text is None:
                return False
            state = text
        elif text is not None:
            for name in ("c_low", "c_high", "n", "to_ms"):
                state[name][0] = text[name][0]  # type: ignore[assignment]  # the same kind of number per name
        c_low, c_high, n, to_ms = state["c_low"], state["c_high"], state["n"], state["to_ms"]
        row = self.rows([key])[0]
        k = min(len(n), self.horizons)
        self.c_low[row] = 0.0
        self.c_high[row] = 0.0
        self.n[row] = 0
        self.to_ms[row] = -1
        self.c_low[row, :k] = np.clip(c_low[:k], -LIMIT, LIMIT)
        self.c_high[row, :k] = np.clip(c_high[:k], -LIMIT, LIMIT)
        self.n[row, :k] = np.maximum(n[:k], 0)
        self.to_ms[row, :k] = to_ms[:k]
        self.banded[row] = 0
        self.covered[row] = 0
        banded, covered = state.get("banded"), state.get("covered")
        if banded is not None and covered is not None and len(banded) == len(covered) == len(n):
            self.banded[row, :k] = banded[:k]
            self.covered[row, :k] = covered[:k]
        return True


def text_state(fields: Mapping[str, str]) -> dict[str, list[float] | list[int]] | None:
    """A state's comma-separated text fields as ``unpack_state`` gives the packed one (``banded``
    and ``covered`` only where both are there and readable); None when unreadable."""
    try:
        c_low = [float(v) for v in fields["c_low"].split(",")]
        c_high = [float(v) for v in fields["c_high"].split(",")]
        n = [int(v) for v in fields["n"].split(",")]
        to_ms = [int(v) for v in fields.get("to_ms", "-1").split(",")]
    except (KeyError, ValueError):
        return None
    if len(to_ms) == 1:
        to_ms *= len(n)
    if not (len(c_low) == len(c_high) == len(n) == len(to_ms)) or not all(np.isfinite(c_low + c_high)):
        return None
    state: dict[str, list[float] | list[int]] = {"c_low": c_low, "c_high": c_high, "n": n, "to_ms": to_ms}
    try:
        state["banded"] = [int(v) for v in fields["banded"].split(",")]
        state["covered"] = [int(v) for v in fields["covered"].split(",")]
    except (KeyError, ValueError):  # a state without per-horizon counts (one horizon)
        state.pop("banded", None)
    return state


def window_steps(horizons: int, step: float, windows: Sequence[int] | IntArray | None,
                 power: float) -> FloatArray:
    """The step of each of ``horizons``: ``step / k**power`` for a target summing k bars."""
    if windows is None:
        return np.full(horizons, float(step))
    k = np.asarray(windows, dtype=np.float64)
    if k.shape != (horizons,) or not (k >= 1).all():
        raise ValueError(f"windows needs one count of bars >= 1 per horizon ({horizons}), got {list(k)}")
    return float(step) / k ** float(power)


def replay(low: FloatArray, high: FloatArray, mid: FloatArray, actual: FloatArray, bound: FloatArray | None = None,
           calibrator: BandCalibrator | None = None) -> tuple[FloatArray, FloatArray, BoolArray]:
    """The published band of a backtest: one series' raw log1p band (``low``, ``high``, ``mid``,
    shape (T,)) in time order, each bar's band made before its ``actual`` (log1p) is folded in,
    as the worker does live. Returns the published (low, high) and whether each was calibrated."""
    calibrator = calibrator or BandCalibrator()
    row = calibrator.rows(["series"])
    limit = np.full(len(low), np.inf) if bound is None else bound
    out_low, out_high = np.empty(len(low)), np.empty(len(low))
    calibrated = np.zeros(len(low), dtype=np.bool_)
    for t in range(len(low)):
        lo, hi, ok = calibrator.band(row, 0, low[t:t + 1], high[t:t + 1], mid[t:t + 1], limit[t:t + 1])
        out_low[t], out_high[t], calibrated[t] = lo[0], hi[0], ok[0]
        calibrator.update(row, 0, low[t:t + 1], high[t:t + 1], actual[t:t + 1])
    return out_low, out_high, calibrated


def replay_targets(low: FloatArray, high: FloatArray, mid: FloatArray, actual: FloatArray, delays: IntArray,
                   bound: FloatArray | None = None, warm_up: int = WARM_UP, windows: IntArray | None = None,
                   window_power: float = WINDOW_POWER) -> tuple[FloatArray, FloatArray, BoolArray]:
    """``replay`` for a multi-horizon backtest: the forecasts of one series at consecutive
    positions, each with T targets (arrays (P, T), log1p); target j of the forecast at position
    p is realised ``delays[j]`` positions later (its window's offset plus its length in bars), so
    it is learnt only then, as live. Horizon index j of the calibrator is target j; ``windows``:
    each target's bars (its step, ``window_steps``; None: one bar each)."""
    positions, targets = low.shape
    calibrator = BandCalibrator(targets, warm_up=warm_up, windows=windows, window_power=window_power)
    rows = np.zeros(targets, dtype=np.int64)
    calibrator.rows(["series"])
    js = np.arange(targets)
    limit = np.full(low.shape, np.inf) if bound is None else bound
    out_low, out_high = np.empty(low.shape), np.empty(low.shape)
    calibrated = np.zeros(low.shape, dtype=np.bool_)
    delays = np.asarray(delays, dtype=np.int64)
    for p in range(positions):
        earlier = p - delays
        due = earlier >= 0
        if due.any():
            made, which = earlier[due], js[due]
            calibrator.update(rows[due], which, low[made, which], high[made, which], actual[made, which],
                              published=(out_low[made, which], out_high[made, which]))
        out_low[p], out_high[p], calibrated[p] = calibrator.band(rows, js, low[p], high[p], mid[p], limit[p])
    return out_low, out_high, calibrated
