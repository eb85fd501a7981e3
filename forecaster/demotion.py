"""Self-demotion: whether the serving model is clearly worse than its baseline, from live errors.

Pure (no I/O, no clock): the worker's bookkeeping (``forecaster/recorder.py``) tells a
``DemotionWatch`` about every prediction it records (which model version made it, whether the
output guard replaced it) and every realised error, and asks it for a verdict;
``forecaster/demotion_store.py`` carries a verdict out in Redis.

The rule, over the last ``window`` bars (predicted bar open times) in which a version served, all
its feeds pooled, once it has served that many bars in this process:

- its live rmse_log is above ``ratio`` times naive's on the same bars, plus ``MARGIN``: naive is
  the one baseline scored on every bar the model serves (the last bar's volume), and HAR beats it
  by 15-25% on the test data (NEAR/USDT 0.71 vs 0.84, XRP/ETH 3.1 vs 4.0 on the last 720 bars), so
  a model worse than naive is clearly worse than its baseline; or
- the output guard replaced more than ``GUARDED_SHARE`` of its forecasts (a model that mostly
  does not serve).

A demoted version is demoted once (per process) and never chosen again as the previous version.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np

MARGIN = 0.02
"""Added to naive's rmse_log: on a feed whose volume never changes naive is exact, and a model a
hair off it is not clearly worse."""
GUARDED_SHARE = 0.5
"""A version whose forecasts the output guard replaced more often than this is demoted."""


@dataclass(frozen=True, slots=True)
class Demotion:
    """A verdict: ``version`` is demoted to ``to_version`` (None: the baseline)."""

    version: str
    to_version: str | None
    reason: str
    bars: int
    rmse_log: float
    naive_rmse_log: float
    guarded_share: float


@dataclass
class _Bar:
    """One predicted bar of one version, all its feeds: sums for the scores, counts for the guard."""

    sq_model: float = 0.0
    sq_naive: float = 0.0
    realised: int = 0
    served: int = 0
    guarded: int = 0


@dataclass
class _Version:
    bars: OrderedDict[int, _Bar] = field(default_factory=OrderedDict)
    seen: int = 0  # distinct bars served in this process (the window may hold fewer)

    def bar(self, open_ms: int, window: int) -> _Bar:
        entry = self.bars.get(open_ms)
        if entry is None:
            entry = self.bars[open_ms] = _Bar()
            self.seen += 1
            while len(self.bars) > window:
                self.bars.popitem(last=False)
        return entry


def previous_version(versions: Sequence[str], current: str, demoted: Collection[str]) -> str | None:
    """The newest stored version older than ``current`` that was not demoted (None: the baseline)."""
    if not current.isdigit():
        return None
    older = [v for v in versions if v.isdigit() and int(v) < int(current) and v not in demoted]
    return max(older, key=int) if older else None


class DemotionWatch:
    """Live errors of each model version beside naive's; ``verdict`` says when to demote one."""

    def __init__(self, window: int, ratio: float, *, guarded_share: float = GUARDED_SHARE,
                 margin: float = MARGIN) -> None:
        if window < 1 or ratio <= 0:
            raise ValueError("a demotion window of at least one bar and a positive ratio")
        self.window = window
        self.ratio = ratio
        self.guarded_share = guarded_share
        self.margin = margin
        self.demoted: dict[str, Demotion] = {}
        self.last: Demotion | None = None
        self._versions: dict[str, _Version] = {}
        self._serving: str | None = None  # the version of the newest model forecast seen

    def served(self, version: str, open_ms: int, *, guarded: bool = False, count: int = 1) -> None:
        """``count`` forecasts of bar ``open_ms`` by model ``version`` (``guarded``: the output
        guard replaced them by a baseline's)."""
        state = self._versions.setdefault(version, _Version())
        bar = state.bar(open_ms, self.window)
        bar.served += count
        if guarded:
            bar.guarded += count
        self._serving = version

    def realised(self, version: str, open_ms: int, predicted: float, actual: float, naive: float) -> None:
        """Bar ``open_ms`` closed: ``version``'s own forecast of it against naive's."""
        self.realised_many(version, open_ms, [predicted], [actual], [naive])

    def realised_many(self, version: str, open_ms: int, predicted: Sequence[float], actual: Sequence[float],
                      naive: Sequence[float]) -> None:
        """``realised`` of several feeds' forecasts of the same bar (numpy: 1000 feeds one by one
        cost about 2 ms of the bookkeeping per boundary)."""
        state = self._versions.get(version)
        bar = state.bars.get(open_ms) if state is not None else None
        if bar is None:
            return  # made before this process watched it (or out of the window): not scored
        values = np.array([predicted, actual, naive], dtype=np.float64)
        values = values[:, np.isfinite(values).all(axis=0)]
        logs = np.log1p(np.maximum(values, 0.0))
        bar.sq_model += float(np.square(logs[0] - logs[1]).sum())
        bar.sq_naive += float(np.square(logs[2] - logs[1]).sum())
        bar.realised += values.shape[1]

    def figures(self, version: str | None = None) -> tuple[int, float, float, float]:
        """(bars in the window, rmse_log, naive rmse_log, guarded share) of ``version`` (default:
        the serving one); NaN where nothing was realised or served."""
        state = self._versions.get(version or self._serving or "")
        if state is None:
            return 0, math.nan, math.nan, math.nan
        bars = state.bars.values()
        n = sum(b.realised for b in bars)
        served = sum(b.served for b in bars)
        rmse = math.sqrt(sum(b.sq_model for b in bars) / n) if n else math.nan
        naive = math.sqrt(sum(b.sq_naive for b in bars) / n) if n else math.nan
        share = sum(b.guarded for b in bars) / served if served else math.nan
        return len(state.bars), rmse, naive, share

    def verdict(self, versions: Sequence[str] = ()) -> Demotion | None:
        """A demotion of the serving version when it is due (each version at most once);
        ``versions``: the model store's versions, to choose the previous one from."""
        version = self._serving
        if version is None or version in self.demoted:
            return None
        state = self._versions[version]
        if state.seen < self.window:
            return None
        bars, rmse, naive, share = self.figures(version)
        if share > self.guarded_share:
            reason = (f"the output guard replaced {share:.0%} of its forecasts over the last {bars} bars "
                      f"(more than {self.guarded_share:.0%})")
        elif rmse > self.ratio * naive + self.margin:
            reason = (f"live rmse_log {rmse:.3f} vs naive {naive:.3f} on the same {bars} bars "
                      f"(more than {self.ratio:g} x naive + {self.margin:g})")
        else:
            return None
        demotion = Demotion(version, previous_version(versions, version, self.demoted), reason, bars, rmse, naive,
                            share)
        self.demoted[version] = demotion
        self.last = demotion
        return demotion

    def status(self) -> dict[str, str]:
        """Fields of the forecaster status hash."""
        bars, rmse, naive, share = self.figures()
        last = self.last
        return {
            "watch_version": self._serving or "",
            "watch_bars": str(bars),
            "watch_rmse_log": _num(rmse),
            "watch_naive_rmse_log": _num(naive),
            "watch_guarded_share": _num(share),
            "demoted_version": last.version if last else "",
            "demoted_to": (last.to_version or "baseline") if last else "",
            "demotion_reason": last.reason if last else "",
        }


def _num(value: float) -> str:
    # Empty, never "nan", in a Redis hash.
    return f"{value:.4f}" if math.isfinite(value) else ""
