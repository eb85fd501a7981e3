"""The trainable models around the networks: fit on frames, predict log1p volume at positions.

- ``LstmModel`` (the default, ``lstm``, forecaster/lstm_model.py): HAR's forecast plus a correction
  an LSTM learns from the last ``look_back`` bars; quantiles by pinball loss; with horizons, every
  target in the same forward pass.
- ``SeedModel`` (``seed``, forecaster/seed_model.py): the design note's model, faithfully.
- ``EnsembleModel`` (``ensemble``, forecaster/ensemble_model.py): the LSTM and HAR blended with a
  weight fitted on validation.

The training loop's parts are in forecaster/training_loop.py, the loss of a model with horizons in
forecaster/target_loss.py.
"""

from __future__ import annotations

from collections.abc import Sequence

from forecaster.baselines import LogForecaster
from forecaster.ensemble_model import EnsembleModel
from forecaster.features import usable_features
from forecaster.frame import BarFrame
from forecaster.lstm_model import LstmModel
from forecaster.seed_model import SeedModel
from volcast.settings import Feature, ModelSettings


def cap_frames(frames: Sequence[tuple[str, BarFrame]], max_bars: int) -> list[tuple[str, BarFrame]]:
    return [(k, f.tail(max_bars) if max_bars else f) for k, f in frames]



def build_untrained(settings: ModelSettings, features: Sequence[Feature], interval_ms: int) -> LogForecaster:
    if settings.name == "seed":
        return SeedModel(settings)
    lstm = LstmModel(settings, features, interval_ms)
    return EnsembleModel(lstm) if settings.name == "ensemble" else lstm


def effective_features(settings: ModelSettings, frames: Sequence[tuple[str, BarFrame]]) -> tuple[Feature, ...]:
    known = frozenset.intersection(*(f.known for _, f in frames))
    return usable_features(settings.features, known)
