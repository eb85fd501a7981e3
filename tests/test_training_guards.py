"""Training that cannot produce absurd models, and adversarial bar histories through training, the
predictor and the output guard: nothing non-finite or out of bound comes out."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from forecast_helpers import KEY, TINY_MODEL, TINY_TRAINING, near
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forecaster.features import Batch
from forecaster.frame import BarFrame
from forecaster.guard import bounds, passing, rolling_bounds
from forecaster.lstm_inputs import DESEASONALISED
from forecaster.lstm_model import LstmModel
from forecaster.payload import Prediction
from forecaster.predictor import Forecast, ModelPredictor, load_predictor
from forecaster.training import clean_frame, min_training_bars, train_model
from forecaster.training_loop import quiet
from volcast.keys import Feed

SMALL = TINY_MODEL.model_copy(update={"look_back": 8, "hidden": 4})
FAST = TINY_TRAINING.model_copy(update={"epochs": 1})
SPAN = 1600  # a day of bars plus a little: above min_training_bars
FEED = Feed("binance-usdm", "NEAR/USDT", 60_000)


def with_columns(frame: BarFrame, **columns: np.ndarray) -> BarFrame:
    return dataclasses.replace(frame, **cast(dict[str, Any], columns))  # mypy checks ** against every field


def flat_prices(frame: BarFrame) -> BarFrame:
    price = np.full(len(frame), 2.0)
    return with_columns(frame, open=price, high=price, low=price, close=price)


def assert_sane(forecasts: list[Forecast], window: np.ndarray) -> None:
    """Finite, within the guard's bound, quantiles in order; and publishable."""
    bound = bounds(window)
    for i, forecast in enumerate(forecasts):
        values = [forecast.volume, *forecast.quantiles.values()]
        assert all(math.isfinite(v) and 0.0 <= v <= bound[i] for v in values), (forecast, bound[i])
        assert values[1:] == sorted(values[1:])
        Prediction(FEED, 120_000, 60_000, 1.0, forecast.volume, forecast.quantiles, "lstm", "1", False, 1).to_json()


def test_training_on_too_little_data_is_refused_naming_the_minimum() -> None:
    least = min_training_bars(SMALL, 60_000)
    assert least == 1440 + SMALL.look_back
    eleven_hours = near()[:684]  # the reported case: 11.4 h of bars gave a model forecasting 1.4e28
    with pytest.raises(ValueError, match=f"at least {least} bars of one feed"):
        train_model([(KEY, eleven_hours)], SMALL, FAST, progress=quiet)
    seed = SMALL.model_copy(update={"name": "seed"})
    with pytest.raises(ValueError, match=f"at least {SMALL.look_back + 1} bars"):
        train_model([(KEY, eleven_hours[:SMALL.look_back])], seed, FAST, progress=quiet)


def test_a_frame_too_short_is_left_out_and_recorded(tmp_path: Path) -> None:
    frame = near()
    trained = train_model([(KEY, frame[:SPAN]), ("short", frame[:600])], SMALL, FAST, progress=quiet)
    assert list(trained.span) == [KEY] and trained.left_out == {"short": 600}
    meta = json.loads((trained.save(tmp_path / "v1", "1") / "meta.json").read_text())
    assert meta["left_out"] == {"short": 600}


def test_an_input_without_spread_is_dropped_and_recorded_and_cannot_blow_up_forecasts(tmp_path: Path) -> None:
    # Prices that never move in the training span: every return and range input is constant.
    # Normalised by a 1e-6 floor, real price moves later came in at about 1e6 and gave inf.
    frame = near()
    trained = train_model([(KEY, flat_prices(frame[:SPAN]))], SMALL, FAST, progress=quiet)
    model = trained.model
    assert isinstance(model, LstmModel)
    assert {"abs_return", "range", "signed_return"} <= set(model.dropped_columns)
    assert {"return_5", "return_60"} <= set(model.dropped_static)
    assert "log_volume" not in model.dropped_columns
    meta = json.loads((trained.save(tmp_path / "v1", "1") / "meta.json").read_text())
    assert set(meta["normalisation"]["dropped_columns"]) == set(model.dropped_columns)
    loaded = load_predictor(tmp_path / "v1", SMALL)
    positions = np.arange(SPAN, len(frame), 7)
    for predictor in (ModelPredictor(model, "lstm", "1"), loaded):
        point, quants = predictor.forecast_positions(KEY, frame, positions)  # unguarded
        assert passing(point, quants, rolling_bounds(frame.volume, positions)).all()


def test_an_artifact_divided_by_a_floor_loads_with_that_input_dropped(tmp_path: Path) -> None:
    frame = near()
    trained = train_model([(KEY, frame[:SPAN])], SMALL, FAST, progress=quiet)
    directory = trained.save(tmp_path / "v1", "1")
    meta = json.loads((directory / "meta.json").read_text())
    # What an artifact written before inputs were dropped holds: no list, a 1e-6 floor.
    norm = meta["normalisation"]
    del norm["dropped_columns"], norm["dropped_static"]
    norm["column_std"][meta["columns"].index(DESEASONALISED)] = 1e-6
    norm["static_std"][meta["static"].index("time_of_day")] = 1e-6
    (directory / "meta.json").write_text(json.dumps(meta))
    loaded = load_predictor(directory, SMALL).model
    assert isinstance(loaded, LstmModel)
    assert loaded.dropped_columns == (DESEASONALISED,) and loaded.dropped_static == ("time_of_day",)
    positions = np.arange(SPAN, len(frame), 11)
    point, quants = ModelPredictor(loaded, "lstm", "1").forecast_positions(KEY, frame, positions)
    assert passing(point, quants, rolling_bounds(frame.volume, positions)).all()


def test_bars_that_cannot_be_real_are_cleaned() -> None:
    frame = near()[:50]
    volume, close = frame.volume.copy(), frame.close.copy()
    volume[[1, 2, 3]] = [np.nan, np.inf, -4.0]
    close[[0, 5, 6]] = [np.nan, 0.0, -np.inf]
    cleaned = clean_frame(with_columns(frame, volume=volume, close=close))
    assert cleaned.volume[1:4].tolist() == [0.0, 0.0, 0.0] and cleaned.volume[4] == frame.volume[4]
    assert cleaned.close[0] == frame.close[1]  # the first good close, at the start
    assert cleaned.close[5] == cleaned.close[6] == frame.close[4]  # the last good close carried
    assert clean_frame(frame) is frame


def _zeros(f: BarFrame) -> BarFrame:
    return with_columns(f, volume=np.zeros(len(f)))


def _constant(f: BarFrame) -> BarFrame:
    return with_columns(flat_prices(f), volume=np.full(len(f), 5.0))


def _spike(f: BarFrame) -> BarFrame:
    v = f.volume.copy()
    v[len(f) - 30] = 1e12
    return with_columns(f, volume=v)


def _empty_day(f: BarFrame) -> BarFrame:
    v = f.volume.copy()
    v[-1440:] = 0.0
    return with_columns(f, volume=v)


def _nan_fields(f: BarFrame) -> BarFrame:
    v, c, h = f.volume.copy(), f.close.copy(), f.high.copy()
    v[[100, len(f) - 3]] = np.nan
    c[len(f) - 10] = np.nan
    h[len(f) - 2] = np.inf
    return with_columns(f, volume=v, close=c, high=h)


def _negative(f: BarFrame) -> BarFrame:
    v = f.volume.copy()
    v[-5:] = -1e9
    return with_columns(f, volume=v)


def _zero_prices(f: BarFrame) -> BarFrame:
    zero = np.zeros(len(f))
    return with_columns(f, open=zero, high=zero, low=zero, close=zero)


ADVERSARIAL: dict[str, Callable[[BarFrame], BarFrame]] = {
    "all zeros": _zeros, "constant": _constant, "1e12 spike": _spike, "a day of empty bars": _empty_day,
    "NaN and inf in fields": _nan_fields, "negative volume": _negative, "zero prices": _zero_prices,
}


@pytest.fixture(scope="module")
def real_model() -> ModelPredictor:
    trained = train_model([(KEY, near()[:SPAN])], SMALL, FAST, progress=quiet)
    return ModelPredictor(trained.model, "lstm", "1")


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_histories_through_training_the_predictor_and_the_guard(
        name: str, real_model: ModelPredictor) -> None:
    frame = ADVERSARIAL[name](near()[:SPAN + 300])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no overflow or invalid value on the way
        trained = train_model([(KEY, frame[:SPAN])], SMALL, FAST, progress=quiet)
        model = ModelPredictor(trained.model, "lstm", "1")
        # Both models, on the adversarial bars as the worker would hold them (not cleaned).
        for predictor in (model, real_model):
            for end in (SPAN, SPAN + 150, SPAN + 300):
                batch = Batch.stack([frame[:end], near()[:end]], predictor.look_back)
                assert_sane(predictor.predict_batch(batch, [KEY, "other"]), batch.volume)
        # What the refit worker scores: finite.
        positions = np.arange(SPAN, SPAN + 300)
        point, _ = model.forecast_positions(KEY, clean_frame(frame), positions)
        assert np.isfinite(point).all()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    column=st.sampled_from(["volume", "close", "high", "low"]),
    value=st.sampled_from([0.0, 1e-300, 5.0, 1e12, 1e300, -3.0, math.nan, math.inf, -math.inf]),
    start=st.integers(0, 1439),
    width=st.integers(1, 1440),
    end=st.integers(SPAN, 4320),
)
def test_any_corruption_of_a_window_gives_a_sane_forecast(real_model: ModelPredictor, column: str, value: float,
                                                          start: int, width: int, end: int) -> None:
    frame = near()[end - real_model.look_back:end]
    values = getattr(frame, column).copy()
    values[start:start + width] = value
    bad = with_columns(frame, **{column: values})
    batch = Batch.stack([bad, frame])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # log of 0 or inf inputs: the guard's job
        forecasts = real_model.predict_batch(batch, [KEY, KEY])
    assert_sane(forecasts, batch.volume)
    assert forecasts[1].guard is None
