"""What the worker publishes instead of a guarded forecast: the feed's fallback baseline on the
same bars, or the naive forecast when that fails the guard too.

A ``ModelPredictor`` already replaced a failing forecast by the naive one (``Forecast.guard``
says why, forecaster/guard.py). The worker does better where it can: HAR (or EWMA for a short
history) on the same window, which is what serves the feed when there is no model. Guarded
forecasts are rare, so this runs only for them, grouped into one forward pass per baseline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from forecaster.bar_reader import Histories
from forecaster.predictor import Forecast, Predictor
from volcast.keys import Feed

log = logging.getLogger(__name__)


def baseline_forecasts(feeds: Sequence[Feed], histories: Histories, choose: Callable[[int], Predictor],
                       naive: Predictor, key_of: Callable[[Feed], str]) -> list[tuple[Forecast, Predictor]]:
    """For each feed, ``choose(bars held)``'s forecast from its window, with the predictor that
    made it: ``naive`` where the baseline raises or is itself guarded."""
    groups: dict[tuple[int, int], tuple[Predictor, list[Feed]]] = {}
    for feed in feeds:
        available = histories.length(feed)
        predictor = choose(available)
        length = predictor.history_length(available)
        if length is None:
            predictor, length = naive, 1
        groups.setdefault((id(predictor), length), (predictor, []))[1].append(feed)
    made: dict[Feed, tuple[Forecast, Predictor]] = {}
    for (_, length), (predictor, group) in groups.items():
        for ordered, batch in histories.batches(group, length):
            keys = [key_of(f) for f in ordered]
            try:
                forecasts = predictor.predict_batch(batch, keys)
                used = predictor
            except Exception as exc:  # an unfitted or broken baseline: the naive forecast
                log.error("%s failed on %d guarded histories, serving the naive baseline: %s",
                          predictor.name, len(ordered), exc)
                forecasts = naive.predict_batch(batch.bars_from(length - 1), keys)
                used = naive
            for feed, forecast in zip(ordered, forecasts, strict=True):
                # A baseline's own guarded forecast already holds the naive values.
                made[feed] = (forecast, naive if forecast.guard is not None else used)
    return [made[feed] for feed in feeds]
