"""The output guard and its last lines of defence, as pure units: bounds, checks, the predictor's
replacement, payloads that refuse non-finite numbers, live scores that a bad value cannot poison."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import orjson
import pytest

from forecaster.baselines import LogForecaster
from forecaster.features import Batch
from forecaster.frame import FloatArray, IntArray
from forecaster.guard import (
    ABOVE_BOUND,
    GUARD_BARS,
    GUARD_FACTOR,
    NOT_FINITE,
    QUANTILE_NOT_FINITE,
    QUANTILE_OUT_OF_RANGE,
    QUANTILES_OUT_OF_ORDER,
    GuardCounts,
    bounds,
    clean_volume,
    log_bounds,
    passing,
    passing_log,
    reason_log,
    rolling_bounds,
)
from forecaster.live_scores import LiveScores, Realised
from forecaster.payload import Guarded, NonFiniteError, Prediction, encode_all
from forecaster.predictor import ModelPredictor
from volcast.keys import Feed

FEED = Feed("binance", "BTC/USDT", 60_000)


class FixedLog(LogForecaster):
    """A fake network (pure unit test): the given log1p forecasts, whatever the bars."""

    name = "lstm"

    def __init__(self, point: Sequence[float], quantiles: Sequence[Sequence[float]] | None) -> None:
        self.look_back = 3
        self.point = np.array(point, dtype=np.float64)
        self.quants = None if quantiles is None else np.array(quantiles, dtype=np.float64)

    @property
    def quantile_levels(self) -> tuple[float, ...]:
        return () if self.quants is None else (0.1, 0.5, 0.9)

    def predict_log(self, batch: Batch, keys: Sequence[str], positions: IntArray
                    ) -> tuple[FloatArray, FloatArray | None]:
        return self.point[:, None], None if self.quants is None else self.quants[:, None, :]


def batch_of(volumes: Sequence[Sequence[float]]) -> Batch:
    v = np.array(volumes, dtype=np.float64)
    times = np.broadcast_to(60_000 * np.arange(v.shape[1], dtype=np.int64), v.shape)
    ones = np.ones_like(v)
    return Batch(60_000, times, ones, ones, ones, v, np.zeros_like(v), np.zeros_like(v), frozenset())


def test_the_bound_is_ten_times_the_largest_finite_volume_of_the_last_day() -> None:
    window = np.array([[1.0, 5.0, 2.0], [0.0, 0.0, 0.0], [np.nan, 3.0, np.inf], [-4.0, np.nan, -1.0]])
    assert bounds(window).tolist() == [GUARD_FACTOR * 6 - 1, GUARD_FACTOR - 1, GUARD_FACTOR * 4 - 1, GUARD_FACTOR - 1]
    old_spike = np.zeros((1, GUARD_BARS + 10))
    old_spike[0, 5] = 1e12  # more than a day ago: out of the window
    assert bounds(old_spike)[0] == GUARD_FACTOR - 1
    assert bounds(np.zeros((2, 0))).tolist() == [GUARD_FACTOR - 1] * 2


def test_rolling_bounds_are_the_live_bounds_of_each_position() -> None:
    rng = np.random.default_rng(1)
    volume = rng.gamma(1.0, 10.0, size=GUARD_BARS + 300)
    volume[[7, 1500]] = [np.nan, 5e6]
    positions = np.array([1, 2, 8, 500, GUARD_BARS, GUARD_BARS + 1, 1501, len(volume) - 1, len(volume)])
    expected = [bounds(volume[None, max(0, p - GUARD_BARS):p])[0] for p in positions]
    np.testing.assert_allclose(rolling_bounds(volume, positions), expected)


def test_the_checks_in_volume_and_in_log_space_agree_and_name_every_kind_of_failure() -> None:
    bound = np.array([100.0] * 7)
    point = np.array([5.0, np.nan, np.inf, 500.0, 5.0, 5.0, 5.0])
    quantiles = np.array([[1, 5, 9], [1, 5, 9], [1, 5, 9], [1, 5, 9], [1, np.nan, 9], [1, 5, 900], [9, 5, 1]],
                         dtype=float)
    ok = passing(point, quantiles, bound)
    assert ok.tolist() == [True] + [False] * 6
    with np.errstate(invalid="ignore"):
        log_point, log_quantiles, log_bound = np.log1p(point), np.log1p(quantiles), np.log1p(bound)
    assert passing_log(log_point, log_quantiles, log_bound).tolist() == ok.tolist()
    reasons = [reason_log(float(p), q.tolist(), float(b))
               for p, q, b in zip(log_point[1:], log_quantiles[1:], log_bound[1:], strict=True)]
    assert reasons == [NOT_FINITE, NOT_FINITE, ABOVE_BOUND, QUANTILE_NOT_FINITE, QUANTILE_OUT_OF_RANGE,
                       QUANTILES_OUT_OF_ORDER]
    assert passing(np.array([-0.5]), None, np.array([1.0])).tolist() == [False]
    assert passing_log(np.array([-0.5, -np.inf]), None, np.array([1.0, 1.0])).tolist() == [True, True]  # volume 0
    window = np.array([[1.0, 5.0, np.nan], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(log_bounds(np.log1p(window)), np.log1p(bounds(window)))


def test_an_overflowing_model_is_replaced_by_naive_without_a_warning() -> None:
    # The reported failure: log forecasts past expm1's range gave 1.37e28, inf and NaN quantiles.
    model = FixedLog([1e4, 64.8, 2.0, math.nan], [[1.0, 2.0, 3.0], [60.0, 64.0, 70.0], [1.0, 2.0, 3.0],
                                                   [1.0, 2.0, 3.0]])
    predictor = ModelPredictor(model, "lstm", "1")
    batch = batch_of([[10.0, 20.0, 30.0], [5.0, 5.0, 7.0], [1.0, 2.0, 3.0], [1.0, 1.0, np.nan]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # expm1's RuntimeWarning: overflow
        got = predictor.predict_batch(batch, ["a", "b", "c", "d"])
    for forecast, window in zip(got, batch.volume, strict=True):
        values = [forecast.volume, *forecast.quantiles.values()]
        assert all(math.isfinite(v) and 0 <= v <= bounds(window[None])[0] for v in values), forecast
    assert [f.guard for f in got] == [ABOVE_BOUND, ABOVE_BOUND, None, NOT_FINITE]
    assert (got[0].volume, got[0].quantiles) == (30.0, {})  # the naive forecast: the last bar
    assert got[3].volume == 0.0  # naive of a NaN bar: no volume
    assert got[2].volume == pytest.approx(math.expm1(2.0)) and len(got[2].quantiles) == 3


def prediction(volume: float, last_volume: float = 5.0, quantiles: dict[float, float] | None = None,
               guard: Guarded | None = None) -> Prediction:
    return Prediction(FEED, 120_000, 60_000, last_volume, volume, quantiles or {0.1: 1.0, 0.9: 9.0}, "lstm", "4",
                      False, 99, guard)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_payload_refuses_numbers_that_are_not_finite(bad: float) -> None:
    for p in (prediction(bad), prediction(1.0, last_volume=bad), prediction(1.0, quantiles={0.1: 0.5, 0.9: bad})):
        with pytest.raises(NonFiniteError):
            p.to_json()
        with pytest.raises(NonFiniteError):
            p.to_fields()
    good = prediction(1.0)
    assert encode_all([good, prediction(bad), good]) == [good.to_json(), None, good.to_json()]


def test_a_guarded_payload_says_why_and_what_it_replaced() -> None:
    guarded = prediction(2.0, guard=Guarded(ABOVE_BOUND, "lstm", "3"))
    raw = orjson.loads(guarded.to_json())
    assert raw["guard"] == {"reason": ABOVE_BOUND, "replaced": {"name": "lstm", "version": "3"}}
    assert Prediction.from_json(guarded.to_json()) == guarded
    assert guarded.to_fields()["guard"] == ABOVE_BOUND
    plain = prediction(2.0)
    assert "guard" not in orjson.loads(plain.to_json())
    assert plain.to_fields()["guard"] == ""  # HSET must overwrite an earlier reason
    assert b"null" not in plain.to_json()


def test_a_nan_record_does_not_poison_the_live_scores() -> None:
    scores = LiveScores(window=3)
    scores.add(FEED, Realised(0, predicted=10.0, actual=10.0, naive=8.0, model_version="1"))
    scores.add(FEED, Realised(60_000, predicted=math.nan, actual=10.0, naive=10.0, model_version="1"))
    scores.add(FEED, Realised(120_000, predicted=10.0, actual=math.nan, naive=10.0, model_version="1"))
    out = scores.add(FEED, Realised(180_000, predicted=11.0, actual=10.0, naive=10.0, model_version="1"))
    assert all("nan" not in v and "inf" not in v for v in out.values()), out
    assert out["n"] == "2" and float(out["mae"]) == pytest.approx(0.5)


def test_mase_is_empty_not_nan_when_naive_made_no_error() -> None:
    out = LiveScores(window=5).add(FEED, Realised(0, predicted=3.0, actual=4.0, naive=4.0, model_version="1"))
    assert out["mase"] == "" and float(out["mae"]) == 1.0


def test_a_huge_error_leaves_no_residue_in_the_running_sums() -> None:
    scores = LiveScores(window=2)
    scores.add(FEED, Realised(0, predicted=1e12, actual=1.0, naive=1e12, model_version="1"))
    out = {}
    for i in range(1, 7):
        out = scores.add(FEED, Realised(i * 60_000, predicted=1.3, actual=1.0, naive=1.1, model_version="1"))
    # Exact to float rounding (the running sums once kept 0.3000244 and 0.0999878 here).
    assert float(out["mae"]) == pytest.approx(0.3, rel=1e-12)
    assert float(out["naive_mae"]) == pytest.approx(0.1, rel=1e-12)


def test_guard_counts_for_the_status_hash() -> None:
    counts = GuardCounts()
    assert counts.status()["guarded"] == "0"
    assert counts.add("binance:BTC/USDT", ABOVE_BOUND, 5) == 1
    assert counts.add("binance:BTC/USDT", NOT_FINITE, 6) == 2
    assert counts.add("binance:ETH/USDT", ABOVE_BOUND, 7) == 1
    status = counts.status()
    assert (status["guarded"], status["guarded_feeds"], status["last_guard_reason"], status["last_guard_feed"],
            status["last_guard_ms"]) == ("3", "2", ABOVE_BOUND, "binance:ETH/USDT", "7")
    assert (status["guarded_above_bound"], status["guarded_not_finite"]) == ("2", "1")


def test_a_volume_that_cannot_be_one_counts_as_none() -> None:
    assert [clean_volume(v) for v in (3.5, 0.0, -2.0, math.nan, math.inf)] == [3.5, 0.0, 0.0, 0.0, 0.0]
