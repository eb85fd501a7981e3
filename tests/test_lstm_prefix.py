"""Prepared LSTM states: the forecasts of whole windows, reused only for the very bars they came from."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
from forecast_helpers import KEY, TINY_MODEL, TINY_TRAINING, near

from forecaster.baselines import Har
from forecaster.ensemble_model import EnsembleModel
from forecaster.features import DIRECT_SUM_POSITIONS, Batch, trailing_means
from forecaster.frame import BarFrame
from forecaster.lstm_model import LstmModel
from forecaster.predictor import ModelPredictor
from forecaster.training import train_model
from forecaster.training_loop import quiet
from volcast.keys import Feed
from volcast.settings import ModelSettings

SPAN = 1440 + 400
VARIANTS = {
    "default": TINY_MODEL,
    "attention, two layers, two members": TINY_MODEL.model_copy(update={"attention": True, "layers": 2,
                                                                        "members": 2}),
    "ensemble": TINY_MODEL.model_copy(update={"name": "ensemble"}),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def predictor(request: pytest.FixtureRequest) -> ModelPredictor:
    settings: ModelSettings = VARIANTS[request.param]
    trained = train_model([(KEY, near()[:SPAN])], settings, TINY_TRAINING, progress=quiet)
    return ModelPredictor(trained.model, settings.name, "1")


def lstm_of(predictor: ModelPredictor) -> LstmModel:
    model = predictor.model
    lstm = model.lstm if isinstance(model, EnsembleModel) else model
    assert isinstance(lstm, LstmModel)
    return lstm


def histories(end: int, count: int = 5) -> tuple[list[str], list[BarFrame]]:
    """``count`` feeds: stretches of the real bars ending at ``end - 37 * i`` (own keys, one known)."""
    frame = near()
    keys = [KEY, *(f"feed-{i}" for i in range(1, count))]
    return keys, [frame[: end - 37 * i] for i in range(count)]


def forecasts(predictor: ModelPredictor, frames: list[BarFrame], keys: list[str]) -> np.ndarray:
    length = predictor.look_back
    got = predictor.predict_batch(Batch.stack(frames, length), keys)
    # A guarded forecast (a NaN bar) has no quantiles: NaN in their columns.
    levels = predictor.model.quantile_levels
    return np.array([[f.volume, *(f.quantiles.get(q, np.nan) for q in levels)] for f in got])


def whole_windows(predictor: ModelPredictor, frames: list[BarFrame], keys: list[str]) -> np.ndarray:
    lstm = lstm_of(predictor)
    kept, lstm.prefix = lstm.prefix, None
    try:
        return forecasts(predictor, frames, keys)
    finally:
        lstm.prefix = kept


def test_prepared_forecasts_are_the_whole_windows_forecasts(predictor: ModelPredictor) -> None:
    keys, now = histories(SPAN + 300)
    before = [f[:-1] for f in now]
    lstm = lstm_of(predictor)
    predictor.prepare(Batch.stack(before, predictor.prepare_bars), keys)
    hits = lstm.prefix_hits
    got = forecasts(predictor, now, keys)
    assert lstm.prefix_hits - hits == len(keys)  # every feed took one LSTM step
    np.testing.assert_allclose(got, whole_windows(predictor, now, keys), rtol=1e-5)


def test_a_changed_bar_or_another_feed_reads_its_whole_window(predictor: ModelPredictor) -> None:
    keys, now = histories(SPAN + 350)
    predictor.prepare(Batch.stack([f[:-1] for f in now], predictor.prepare_bars), keys)
    # Feed 0's bar three bars back was written again with another volume: its state no longer fits.
    volume = now[0].volume.copy()
    volume[-3] *= 1.5
    now[0] = dataclasses.replace(now[0], volume=volume)
    asked = [*reversed(keys), "never-prepared"]
    frames = [*reversed(now), now[1]]
    lstm = lstm_of(predictor)
    hits, misses = lstm.prefix_hits, lstm.prefix_misses
    got = forecasts(predictor, frames, asked)
    assert (lstm.prefix_hits - hits, lstm.prefix_misses - misses) == (len(keys) - 1, 2)
    np.testing.assert_allclose(got, whole_windows(predictor, frames, asked), rtol=1e-5)


def test_a_state_prepared_for_another_bar_is_not_used(predictor: ModelPredictor) -> None:
    keys, now = histories(SPAN + 380)
    predictor.prepare(Batch.stack([f[:-2] for f in now], predictor.prepare_bars), keys)  # a bar too early
    lstm = lstm_of(predictor)
    hits = lstm.prefix_hits
    got = forecasts(predictor, now, keys)
    assert lstm.prefix_hits == hits
    np.testing.assert_allclose(got, whole_windows(predictor, now, keys), rtol=1e-5)


def test_a_nan_bar_is_never_matched(predictor: ModelPredictor) -> None:
    keys, now = histories(SPAN + 390, count=2)
    high = now[0].high.copy()
    high[-5] = np.nan
    now[0] = dataclasses.replace(now[0], high=high)
    predictor.prepare(Batch.stack([f[:-1] for f in now], predictor.prepare_bars), keys)
    lstm = lstm_of(predictor)
    misses = lstm.prefix_misses
    forecasts(predictor, now, keys)
    assert lstm.prefix_misses - misses == 1


def test_a_window_as_long_as_the_history_is_never_prepared() -> None:
    # Its first bar has no bar before it in the live history (its return is 0 there): a state
    # prepared from the bars of the boundary before would not be that window's.
    day = LstmModel(TINY_MODEL.model_copy(update={"look_back": 1440}), TINY_MODEL.features, 60_000)
    assert day.prepare_bars == 0
    assert LstmModel(TINY_MODEL, TINY_MODEL.features, 60_000).prepare_bars == TINY_MODEL.look_back


def test_trailing_means_direct_sums_agree_with_the_cumulative_sum() -> None:
    rng = np.random.default_rng(3)
    lv = rng.gamma(2.0, 2.0, size=(3, 3000))
    positions = np.array([1, 4, 200, 1440, 1441, 2999, 3000])
    assert len(positions) > DIRECT_SUM_POSITIONS  # the cumulative-sum path
    together = trailing_means(lv, positions)
    for j, p in enumerate(positions):
        np.testing.assert_allclose(trailing_means(lv, np.array([p]))[:, 0], together[:, j], rtol=1e-12)


def test_profile_at_is_each_keys_profile_and_follows_a_refit() -> None:
    frame = near()
    har = Har()
    har.fit([("a", frame[:2000]), ("b", frame[1000:3000])])
    slots = np.array([[0, 5, 1439], [7, 7, 8], [100, 200, 300]])
    got = har.profile_at(["b", "a", "unknown"], slots)
    want = np.stack([har.profile_for(k)[s] for k, s in zip(["b", "a", "unknown"], slots, strict=True)])
    np.testing.assert_array_equal(got, want)
    har.fit([("a", frame[2000:])])  # new profiles: the table is built again
    np.testing.assert_array_equal(har.profile_at(["a", "b"], slots[:2]),
                                  np.stack([har.profile_for("a")[slots[0]], har.global_profile[slots[1]]]))


def test_feed_hash_and_equality_survive_the_cached_hash() -> None:
    a, b = Feed("binance", "BTC/USDT", 60_000), Feed("binance", "BTC/USDT", 60_000)
    assert a == b and hash(a) == hash(b) and a is not b
    assert {a: 1}[b] == 1
    assert Feed("binance", "BTC/USDT", 1_000) != a
    copy = pickle.loads(pickle.dumps(a))
    assert copy == a and hash(copy) == hash(a)
    assert repr(a) == "Feed(exchange='binance', symbol='BTC/USDT', interval_ms=60000)"
