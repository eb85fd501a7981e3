"""The refit worker's Prometheus metrics: runs by result, how long they took, the last scores.

The worker keeps only its last outcome in Redis (``P:refit``); these count every run of this
process from its start, as Prometheus counters do.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from volcast.metric_histogram import Buckets, cumulative

if TYPE_CHECKING:
    from forecaster.refit import RefitOutcome

RESULTS = ("promoted", "kept", "skipped", "failed")
# A run reads every feed's bars, trains and scores: seconds for a demo model, an hour for a big one.
RUN_BUCKETS_S = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
_PREFIX = "volcast_refit_"


class RefitMetrics:
    """A ``prometheus_client`` collector over the runs of one refit worker."""

    def __init__(self) -> None:
        self.runs = dict.fromkeys(RESULTS, 0)
        self.seconds = Buckets(RUN_BUCKETS_S)
        self.last: RefitOutcome | None = None
        self.last_seconds = 0.0

    def observe(self, outcome: RefitOutcome, seconds: float) -> None:
        self.runs[outcome.result] += 1
        self.seconds.add(seconds)
        self.last, self.last_seconds = outcome, seconds

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        runs = CounterMetricFamily(_PREFIX + "runs", "Refit runs, by result", labels=["result"])
        for result, count in dict(self.runs).items():
            runs.add_metric([result], count)
        yield runs
        seconds = HistogramMetricFamily(_PREFIX + "run_seconds", "Duration of a refit run (read, train, score, "
                                        "promote)")
        seconds.add_metric([], cumulative(self.seconds.bounds, list(self.seconds.counts)), self.seconds.total)
        yield seconds
        last = self.last
        if last is None:
            return
        yield GaugeMetricFamily(_PREFIX + "last_run_seconds", "Duration of the last run", value=self.last_seconds)
        scores = GaugeMetricFamily(_PREFIX + "last_scores", "Holdout scores of the last run that trained, by role "
                                   "(challenger, champion) and score (rmse_log, mase)", labels=["role", "score"])
        for role, values in (("challenger", last.challenger), ("champion", last.champion)):
            for score in ("rmse_log", "mase"):
                value = values.get(score)
                if value is not None and math.isfinite(value):
                    scores.add_metric([role, score], value)
        yield scores
        if last.version is not None and last.version.isdigit():
            yield GaugeMetricFamily(_PREFIX + "promoted_version", "Version promoted by the last run that promoted",
                                    value=int(last.version))
