"""Multi-horizon forecasts: targets, HAR direct and the other baselines per horizon, the lstm's
direct heads (one forward pass), the guard on every horizon, and the schema 2 payload."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from forecast_helpers import KEY, TINY_MODEL, TINY_TRAINING, near

from forecaster.artifact import ArtifactError
from forecaster.baselines import Har, TimeOfDay, naive_targets
from forecaster.features import Batch
from forecaster.horizons import Horizons, log1p_window_sums, resolve, window_sums
from forecaster.lstm_model import LstmModel
from forecaster.payload import HorizonValues, Prediction
from forecaster.predictor import Forecast, ModelPredictor, forecasts_from_log, round_significant
from forecaster.target_loss import MAX_TARGET_SCALE, NEXT_BAR_WEIGHT, target_loss_weights
from forecaster.training import load_model, train_model
from forecaster.training_loop import quiet
from volcast.keys import Feed
from volcast.settings import ConfigError, ModelSettings, settings_from_mapping

MINUTE = 60_000


def test_default_horizons_are_the_next_hour_in_bars_of_the_interval() -> None:
    one_minute = resolve(ModelSettings(), MINUTE)
    assert one_minute.bars == 60 and one_minute.sums == (("5m", 5), ("15m", 15), ("1h", 60))
    assert one_minute.targets[:2] == ((0, 1), (1, 1)) and one_minute.targets[60:] == ((0, 5), (0, 15), (0, 60))
    assert resolve(ModelSettings(), 5 * MINUTE) == Horizons(12, (("15m", 3), ("1h", 12)))
    assert resolve(ModelSettings(), 3_600_000) == Horizons(1, ())
    assert resolve(ModelSettings(), 1_000).bars == 120  # capped: an hour of seconds is 3600 heads
    assert resolve(ModelSettings(name="seed"), MINUTE) == Horizons(1, ())  # the reference stays one step
    assert resolve(ModelSettings(horizons=3, horizon_sums=(120_000,)), MINUTE) == Horizons(3, (("2m", 2),))
    with pytest.raises(ValueError, match="multiples"):
        resolve(ModelSettings(horizon_sums=(90_000,)), MINUTE)
    with pytest.raises(ConfigError, match=r"multiples of bars\.interval"):
        settings_from_mapping({"exchanges": [{"id": "binance", "symbols": ["BTC/USDT"]}],
                               "model": {"horizon_sums": ["90s"]}}, env={})


def test_window_sums_and_nan_past_the_end() -> None:
    values = np.arange(10, dtype=np.float64)
    out = window_sums(values, np.array([2, 8]), ((0, 1), (1, 1), (0, 3)))
    assert out[0].tolist() == [2.0, 3.0, 9.0]
    assert out[1, 0] == 8.0 and out[1, 1] == 9.0 and math.isnan(out[1, 2])


def test_window_sums_are_each_windows_own_sum_of_the_cumulative_sums_bit_for_bit() -> None:
    # Every target at once gives the numbers a window at a time gives (the fits' results stay).
    values = np.maximum(near().volume[:700], 0.0)
    targets = resolve(ModelSettings(), MINUTE).targets
    positions = np.array([0, 1, 5, 300, 640, 641, 699, 700])
    cum = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
    expected = np.full((len(positions), len(targets)), np.nan)
    for i, p in enumerate(positions.tolist()):
        for j, (o, k) in enumerate(targets):
            if p + o + k <= len(values):
                expected[i, j] = cum[p + o + k] - cum[p + o]
    out = window_sums(values, positions, targets)
    assert np.isnan(out).sum() > 0 and np.array_equal(out, expected, equal_nan=True)
    assert window_sums(values, positions[:0], targets).shape == (0, len(targets))
    # The log of each window once, then gathered: the same numbers as the log of every gathered sum.
    assert np.array_equal(log1p_window_sums(values, positions, targets), np.log1p(expected), equal_nan=True)


def test_har_direct_per_horizon_on_real_bars_sees_only_the_past() -> None:
    frame = near()
    spec = resolve(ModelSettings(), MINUTE)
    train, n = frame[:3000], len(frame)
    direct, one_step = Har(horizon_targets=spec.targets), Har()
    direct.fit([(KEY, train)])
    one_step.fit([(KEY, train)])
    assert direct.target_coef.shape == (63, 8) and np.array_equal(direct.coef, one_step.coef)
    batch = Batch.stack([frame])
    pos = np.arange(3000, n - spec.span + 1)
    point, _ = direct.predict_targets(batch, [KEY], pos)
    assert point.shape == (1, len(pos), 63)
    np.testing.assert_allclose(point[0, :, 0], one_step.predict_log(batch, [KEY], pos)[0][0], atol=1e-12)
    actual = np.log1p(window_sums(frame.volume, pos, spec.targets))
    rmse = np.sqrt(np.mean((point[0] - actual) ** 2, axis=0))
    naive = np.sqrt(np.mean((naive_targets(batch, pos, spec.targets)[0] - actual) ** 2, axis=0))
    tod = np.sqrt(np.mean((TimeOfDay().targets_of(batch, [KEY], pos, spec.targets)[0] - actual) ** 2, axis=0))
    # HAR direct is fitted per target: on real bars it beats naive and the profile at every one.
    assert (rmse < naive).all() and (rmse < tod).all()
    # Forecasts at a position read nothing from it on: change the future, they stay.
    changed = frame.volume.copy()
    changed[3500:] *= 7.0
    later = Batch.stack([dataclasses.replace(frame, volume=changed)])
    moved, _ = direct.predict_targets(later, [KEY], np.array([3400, 3500]))
    before, _ = direct.predict_targets(batch, [KEY], np.array([3400, 3500]))
    np.testing.assert_array_equal(moved, before)
    assert not np.array_equal(direct.predict_targets(later, [KEY], np.array([3501]))[0],
                              direct.predict_targets(batch, [KEY], np.array([3501]))[0])


def test_each_target_loss_is_weighted_in_units_of_its_base_error() -> None:
    # Residuals of 4 targets on their bases: the next bar's sd 2, then 2, 1 (a window: 4x less
    # variance) and ~0 (a window of near-constant volume).
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 4, generator=gen)
    z = (z - z.mean(dim=0)) / z.std(dim=0, correction=0)  # exactly unit variance per column
    residuals = z * torch.tensor([2.0, 2.0, 1.0, 1e-4])
    mse, pinball = target_loss_weights(residuals)
    other = (1.0 - NEXT_BAR_WEIGHT) / 3
    # The next bar keeps its share and scale; the same error gives the same share.
    assert mse[0].item() == pytest.approx(NEXT_BAR_WEIGHT) and pinball[0].item() == pytest.approx(NEXT_BAR_WEIGHT)
    assert mse[1].item() == pytest.approx(other, rel=1e-4) and pinball[1].item() == pytest.approx(other, rel=1e-4)
    # Half the error: 4x the MSE weight (variance), 2x the pinball weight (scale).
    assert mse[2].item() == pytest.approx(4 * other, rel=1e-4)
    assert pinball[2].item() == pytest.approx(2 * other, rel=1e-4)
    # A target with next to no error is capped instead of taking over the loss.
    assert mse[3].item() == pytest.approx(MAX_TARGET_SCALE * other, rel=1e-4)
    # The next bar alone (a model without horizons): the plain loss.
    alone_mse, alone_pinball = target_loss_weights(residuals[:, :1])
    assert alone_mse.tolist() == [1.0] and alone_pinball.tolist() == [1.0]


@pytest.fixture(scope="module")
def tiny() -> LstmModel:
    trained = train_model([(KEY, near()[:2600])], TINY_MODEL, TINY_TRAINING, progress=quiet)
    assert isinstance(trained.model, LstmModel)
    return trained.model


def test_one_forward_pass_gives_every_horizon_and_the_next_bar_is_the_first(tiny: LstmModel) -> None:
    frame = near()
    batch = Batch.stack([frame[:3200], frame[100:3300]])
    keys = [KEY, "other"]
    pos = np.array([3000, 3100, 3200])
    point, quants = tiny.predict_targets(batch, keys, pos)
    assert point.shape == (2, 3, 63) and quants is not None and quants.shape == (2, 3, 63, 3)
    assert np.isfinite(point).all() and (np.diff(quants, axis=-1) >= 0).all()
    next_point, next_quants = tiny.predict_log(batch, keys, pos)
    np.testing.assert_array_equal(next_point, point[..., 0])
    assert next_quants is not None
    np.testing.assert_array_equal(next_quants, quants[..., 0, :])
    # The live path: a state prepared over the older bars gives the whole window's horizons.
    live = Batch.stack([frame[:3200], frame[100:3300]], 3000)
    tiny.prepare_next(live.bars_from(1), keys)  # the histories one bar earlier
    prepared, _ = tiny.predict_targets(live, keys, np.array([3000]))
    tiny.prefix = None
    whole, _ = tiny.predict_targets(live, keys, np.array([3000]))
    np.testing.assert_allclose(prepared, whole, rtol=1e-5, atol=1e-5)


def test_artifact_records_its_horizons_and_one_from_before_is_refused_or_served_one_step(
        tiny: LstmModel, tmp_path: Path) -> None:
    from forecaster.training import TrainedModel

    TrainedModel(tiny, TINY_MODEL, TINY_TRAINING).save(tmp_path / "multi", "1")
    loaded, meta = load_model(tmp_path / "multi", TINY_MODEL)
    assert meta["horizons"] == {"bars": 60, "sums": [["5m", 5], ["15m", 15], ["1h", 60]]}
    assert isinstance(loaded, LstmModel) and loaded.har.target_coef.shape == (63, 8)
    with pytest.raises(ArtifactError, match="trained for 60 horizon"):
        load_model(tmp_path / "multi", TINY_MODEL.model_copy(update={"horizons": 30}))
    # A model of the next bar only, as every artifact before horizons: refused under the default
    # settings with what to do, served under horizons 1 without sums.
    single = TINY_MODEL.model_copy(update={"horizons": 1, "horizon_sums": ()})
    old = train_model([(KEY, near()[:2600])], single, TINY_TRAINING.model_copy(update={"epochs": 1}), progress=quiet)
    old.save(tmp_path / "old", "1")
    with pytest.raises(ArtifactError, match=r"horizons 1, horizon_sums \[\]"):
        load_model(tmp_path / "old", TINY_MODEL)
    served, _ = load_model(tmp_path / "old", single)
    assert served.horizon_spec == Horizons(1, ())
    [forecast] = ModelPredictor(served, "lstm", "1").predict([(KEY, near()[:2600])])
    assert forecast.horizons is None and forecast.volume > 0


def test_predictor_publishes_every_horizon_rounded_and_guarded(tiny: LstmModel) -> None:
    predictor = ModelPredictor(tiny, "lstm", "1")
    frame = near()
    [fc] = predictor.predict([(KEY, frame[:3000])])
    assert fc.guard is None and fc.horizons is not None
    h = fc.horizons
    assert len(h.volume) == 60 and set(h.quantiles) == {0.1, 0.5, 0.9}
    assert all(len(v) == 60 for v in h.quantiles.values()) and list(h.sums) == ["5m", "15m", "1h"]
    assert h.volume[0] == pytest.approx(fc.volume, rel=5e-5)  # 5 significant digits
    for i in range(60):
        assert h.quantiles[0.1][i] <= h.quantiles[0.5][i] <= h.quantiles[0.9][i]
    for _, (volume, quantiles) in h.sums.items():
        assert volume > 0 and quantiles[0.1] <= quantiles[0.9]


def _one_row(point: np.ndarray, quants: np.ndarray, spec: Horizons) -> Forecast:
    window = np.full((1, 50), 100.0)
    [fc] = forecasts_from_log(point[:, 0], quants[:, 0], (0.1, 0.5, 0.9), np.log1p(window), window,
                              (point, quants, spec))
    return fc


def test_the_guard_checks_each_horizon_and_each_window() -> None:
    spec = Horizons(3, (("3m", 3),))
    point = np.log1p(np.array([[100.0, 110.0, 120.0, 330.0]]))
    quants = np.stack([point - 0.5, point, point + 0.5], axis=-1)
    fine = _one_row(point, quants, spec)
    assert fine.guard is None and fine.horizons is not None
    # The window of 3 bars may go up to 3 x the bound (each bar within it): 2500 is fine, 5000 not.
    big_sum = point.copy()
    big_sum[0, 3] = math.log1p(2500.0)
    assert _one_row(big_sum, np.stack([big_sum - 0.5, big_sum, big_sum + 0.1], -1), spec).guard is None
    above = math.log1p(5000.0)
    for where, value, why in ((2, above, "horizon_above_bound"), (3, above, "horizon_above_bound"),
                              (1, math.nan, "horizon_not_finite"), (3, math.inf, "horizon_not_finite")):
        bad = point.copy()
        bad[0, where] = value
        fc = _one_row(bad, np.stack([point - 0.5, point, point + 0.5], -1), spec)
        assert fc.guard == why and fc.horizons is None and fc.volume == 100.0
    disordered = quants.copy()
    disordered[0, 2, 0] = disordered[0, 2, 2] + 0.1
    assert _one_row(point, disordered, spec).guard == "horizon_quantiles_out_of_order"
    # The next bar's own failure keeps its plain reason.
    bad = point.copy()
    bad[0, 0] = math.nan
    assert _one_row(bad, quants, spec).guard == "not_finite"


def test_round_significant_is_short_and_monotone() -> None:
    values = np.array([0.0, 1.234567, 123456789.0, 0.000123456789, 99999.95, 1e-300, 4.2e12])
    out = round_significant(values)
    assert out.tolist() == [0.0, 1.2346, 123460000.0, 0.00012346, 100000.0, 1e-300, 4.2e12]
    rng = np.random.default_rng(1)
    x = np.sort(np.exp(rng.normal(0, 8, 5000)))
    assert (np.diff(round_significant(x)) >= 0).all()
    assert np.allclose(round_significant(x), x, rtol=5e-5)


def test_payload_schema_2_round_trip_with_horizons() -> None:
    feed = Feed("binance", "BTC/USDT", MINUTE)
    horizons = HorizonValues([7.5, 8.25, 9.0], {0.1: [1.0, 1.5, 2.0], 0.9: [20.0, 21.0, 22.0]},
                             {"2m": (15.75, {0.1: 4.0, 0.9: 40.0})})
    p = Prediction(feed, 120_000, 60_000, 5.0, 7.5, {0.1: 1.0, 0.9: 20.0}, "lstm", "4", False, 99,
                   horizons=horizons)
    payload = p.to_json()
    # Whole numbers of the horizons as JSON integers (payload.whole_numbers), read back as floats.
    assert b'"schema":2' in payload and b'"horizons":{"volume":[7.5,8.25,9]' in payload
    assert b'"sums":{"2m":{"volume":15.75,"quantiles":{"0.1":4,"0.9":40}}}' in payload
    assert Prediction.from_json(payload) == p
    with pytest.raises(ValueError, match="one value per horizon"):
        Prediction.from_json(payload.replace(b'"0.9":[20,21,22]', b'"0.9":[20]'))


def test_the_fallback_baseline_serves_har_direct_horizons() -> None:
    from forecaster.fallback import FallbackBaseline

    spec = resolve(ModelSettings(), MINUTE)
    frame = near()
    fallback = FallbackBaseline(horizons=spec)
    fallback.refit([(KEY, frame[:2000])])
    [fc] = fallback.choose(2000).predict([(KEY, frame[:2000])])
    assert fc.guard is None and fc.horizons is not None and not fc.horizons.quantiles
    assert len(fc.horizons.volume) == 60 and list(fc.horizons.sums) == ["5m", "15m", "1h"]
    assert fc.horizons.volume[0] == pytest.approx(fc.volume, rel=5e-5)
    # Without horizons (a seed model's settings), HAR forecasts the next bar only.
    plain = FallbackBaseline(horizons=resolve(ModelSettings(name="seed"), MINUTE))
    plain.refit([(KEY, frame[:2000])])
    assert plain.choose(2000).predict([(KEY, frame[:2000])])[0].horizons is None
