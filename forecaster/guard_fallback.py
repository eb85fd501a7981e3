"""What the worker publishes instead of a guarded forecast: the feed's fallback baseline on the
same bars, then EWMA where that baseline fails the guard too, and the naive forecast last.

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
                       naive: Predictor, key_of: Callable[[Feed], str],
                       then: Predictor | None = None) -> list[tuple[Forecast, Predictor]]:
    """For each feed, ``choose(bars held)``'s forecast from its window, with the predictor that
    made it; where that baseline raises or is itself guarded, ``then``'s (EWMA: a level a few
    bars long, which a far horizon of HAR's cannot take off from), and ``naive`` last."""
    groups: dict[tuple[int, int], tuple[Predictor, list[Feed]]] = {}
    for feed in feeds:
        available = histories.length(feed)
        predictor = choose(available)
        length = predictor.history_length(available)
        if length is None:
            predictor, length = naive, 1
        groups.setdefault((id(predictor), length), (predictor, []))[1].append(feed)
    made: dict[Feed, tuple[Forecast, Predictor]] = {}
    fell: list[Feed] = []  # to naive from a baseline other than ``then``: ``then`` is tried on them
    for (_, length), (predictor, group) in groups.items():
        for ordered, batch in histories.batches(group, length):
            keys = [key_of(f) for f in ordered]
            try:
                forecasts = predictor.predict_batch(batch, keys)
                used = predictor
            except Exception as exc:  # an unfitted or broken baseline: the next rung
                rung = then if then is not None and predictor is not then else naive
                log.error("%s failed on %d guarded histories, serving %s: %s",
                          predictor.name, len(ordered), rung.name, exc)
                forecasts = naive.predict_batch(batch.bars_from(length - 1), keys)
                used = naive
            for feed, forecast in zip(ordered, forecasts, strict=True):
                # A baseline's own guarded forecast already holds the naive values.
                made[feed] = (forecast, naive if forecast.guard is not None else used)
                if made[feed][1] is naive and predictor is not naive and predictor is not then:
                    fell.append(feed)
    if then is not None and fell:
        for feed, redone in zip(fell, baseline_forecasts(fell, histories, lambda _: then, naive, key_of),
                                strict=True):
            made[feed] = redone
    return [made[feed] for feed in feeds]
