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
    model: str
    """The serving model's name, ``*`` appended for a baseline serving before any model."""


@dataclass(slots=True)
class DemoTally:
    """Predictions received and scored; a prediction is scored once its bar's volume is known."""

    predictions: int = 0
    baseline_predictions: int = 0
    models_seen: set[str] = field(default_factory=set)
    by_serving: dict[str, int] = field(default_factory=dict)
    """Predictions per serving model (``serving_name``)."""
    banded: dict[str, int] = field(default_factory=dict)
    """Per serving model, predictions that came with their 80% band (the 0.1 and 0.9 quantiles)."""
    pending: dict[tuple[Feed, int], Prediction] = field(default_factory=dict)
    realised: list[Realised] = field(default_factory=list)

    def received(self, prediction: Prediction) -> None:
        self.predictions += 1
        self.baseline_predictions += prediction.baseline
        self.models_seen.add(f"{prediction.model_name}@{prediction.model_version}")
        self.pending[(prediction.feed, prediction.open_time_ms)] = prediction
        model = serving_name(prediction)
        self.by_serving[model] = self.by_serving.get(model, 0) + 1
        self.banded[model] = self.banded.get(model, 0) + (band(prediction) is not None)

    def due(self, prediction: Prediction) -> list[Prediction]:
        """Earlier predictions of the same feed whose bar has now closed (the worker predicts the
        next bar only after the last one closed)."""
        return [
            p for (feed, open_ms), p in self.pending.items()
            if feed == prediction.feed and open_ms < prediction.open_time_ms
        ]

    def realise(self, prediction: Prediction, actual: float) -> Realised:
        self.pending.pop((prediction.feed, prediction.open_time_ms), None)
        row = Realised(prediction.feed, prediction.open_time_ms, prediction.volume, actual, prediction.last_volume,
                       serving_name(prediction))
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
            "serving_models": sorted(self.by_serving),
            "by_model": self.by_model(),
        }

    def by_model(self) -> dict[str, dict[str, object]]:
        """Per serving model: its predictions, those with a band, and its live rmse_log next to
        naive's (the last bar's volume) on exactly the bars it predicted."""
        out: dict[str, dict[str, object]] = {}
        for model in sorted(self.by_serving):
            rows = [r for r in self.realised if r.model == model]
            out[model] = {
                "predictions": self.by_serving[model],
                "with_band": self.banded[model],
                "scored": len(rows),
                "live_rmse_log": _rmse_log([(r.predicted, r.actual) for r in rows]),
                "naive_rmse_log": _rmse_log([(r.naive, r.actual) for r in rows]),
            }
        return out


def _rmse_log(pairs: list[tuple[float, float]]) -> float | None:
    if not pairs:
        return None
    return math.sqrt(sum((math.log1p(max(p, 0.0)) - math.log1p(a)) ** 2 for p, a in pairs) / len(pairs))


HEADER = f"{'feed':<22} {'bar (UTC)':<19} {'predicted':>12} {'80% band':>23} {'actual':>12} {'model':<16}"


def volume_text(value: float) -> str:
    """Every volume of the table with the same two decimals, so the columns read evenly
    (``.6g`` printed 95, 148.2 and 1.482e+03 side by side)."""
    return f"{value:.2f}"


def serving_name(prediction: Prediction) -> str:
    """The model that served a prediction: its name, ``*`` appended for a baseline (serving
    before any model, or after one was refused), as the table marks it."""
    return prediction.model_name + ("*" if prediction.baseline else "")


def band(prediction: Prediction) -> tuple[float, float] | None:
    """The 80% band (the 0.1 and 0.9 quantiles), None when the prediction has none."""
    low, high = prediction.quantiles.get(0.1), prediction.quantiles.get(0.9)
    return None if low is None or high is None else (low, high)


def format_row(
    prediction: Prediction, actual: float | None, clock: Callable[[int], str]
) -> str:
    """One line of the live table; ``actual`` is None while the bar is still forming."""
    got = band(prediction)
    shown_band = f"{volume_text(got[0])}-{volume_text(got[1])}" if got is not None else "-"
    model = prediction.model_name + ("*" if prediction.baseline else f" v{prediction.model_version}")
    shown = volume_text(actual) if actual is not None else "…"
    feed = f"{prediction.feed.exchange}:{prediction.feed.symbol}"
    return (f"{feed:<22} {clock(prediction.open_time_ms):<19} {volume_text(prediction.volume):>12} {shown_band:>23} "
            f"{shown:>12} {model:<16}")
