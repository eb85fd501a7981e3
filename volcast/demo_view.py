"""What `volcast demo` shows: each prediction as it arrives over MQTT, and, once the predicted bar
has closed, the realised volume beside it; plus the summary it prints with ``--json``."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from forecaster.payload import Prediction
from volcast.keys import Feed


@dataclass(slots=True)
class Realised:
    feed: Feed
    open_time_ms: int
    predicted: float
    actual: float
    naive: float


@dataclass(slots=True)
class DemoTally:
    """Predictions received and scored; a prediction is scored once its bar's volume is known."""

    predictions: int = 0
    baseline_predictions: int = 0
    models_seen: set[str] = field(default_factory=set)
    pending: dict[tuple[Feed, int], Prediction] = field(default_factory=dict)
    realised: list[Realised] = field(default_factory=list)

    def received(self, prediction: Prediction) -> None:
        self.predictions += 1
        self.baseline_predictions += prediction.baseline
        self.models_seen.add(f"{prediction.model_name}@{prediction.model_version}")
        self.pending[(prediction.feed, prediction.open_time_ms)] = prediction

    def due(self, prediction: Prediction) -> list[Prediction]:
        """Earlier predictions of the same feed whose bar has now closed (the worker predicts the
        next bar only after the last one closed)."""
        return [
            p for (feed, open_ms), p in self.pending.items()
            if feed == prediction.feed and open_ms < prediction.open_time_ms
        ]

    def realise(self, prediction: Prediction, actual: float) -> Realised:
        self.pending.pop((prediction.feed, prediction.open_time_ms), None)
        row = Realised(prediction.feed, prediction.open_time_ms, prediction.volume, actual, prediction.last_volume)
        self.realised.append(row)
        return row

    def live_rmse_log(self) -> float | None:
        return _rmse_log([(r.predicted, r.actual) for r in self.realised])

    def naive_rmse_log(self) -> float | None:
        return _rmse_log([(r.naive, r.actual) for r in self.realised])

    def summary(self, bars: int) -> dict[str, object]:
        return {
            "bars": bars,
            "predictions": self.predictions,
            "baseline_predictions": self.baseline_predictions,
            "scored": len(self.realised),
            "live_rmse_log": self.live_rmse_log(),
            "naive_rmse_log": self.naive_rmse_log(),
            "models": sorted(self.models_seen),
        }


def _rmse_log(pairs: list[tuple[float, float]]) -> float | None:
    if not pairs:
        return None
    return math.sqrt(sum((math.log1p(max(p, 0.0)) - math.log1p(a)) ** 2 for p, a in pairs) / len(pairs))


HEADER = f"{'feed':<22} {'bar (UTC)':<19} {'predicted':>12} {'80% band':>23} {'actual':>12} {'model':<16}"


def volume_text(value: float) -> str:
    """Every volume of the table with the same two decimals, so the columns read evenly
    (``.6g`` printed 95, 148.2 and 1.482e+03 side by side)."""
    return f"{value:.2f}"


def format_row(
    prediction: Prediction, actual: float | None, clock: Callable[[int], str]
) -> str:
    """One line of the live table; ``actual`` is None while the bar is still forming."""
    low, high = prediction.quantiles.get(0.1), prediction.quantiles.get(0.9)
    band = f"{volume_text(low)}-{volume_text(high)}" if low is not None and high is not None else "-"
    model = prediction.model_name + ("*" if prediction.baseline else f" v{prediction.model_version}")
    shown = volume_text(actual) if actual is not None else "…"
    feed = f"{prediction.feed.exchange}:{prediction.feed.symbol}"
    return (f"{feed:<22} {clock(prediction.open_time_ms):<19} {volume_text(prediction.volume):>12} {band:>23} "
            f"{shown:>12} {model:<16}")
