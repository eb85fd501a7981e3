"""The band calibrator: coverage converges to nominal on heavy-tailed and drifting streams, the
published band stays sane, and its state survives a restart through real Redis."""

from __future__ import annotations

import base64
import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from forecaster.calibration import STEP, WARM_UP, BandCalibrator, replay, replay_targets
from forecaster.calibration_store import Calibration
from forecaster.predictor import Forecast
from volcast.calibration_state import unpack_state
from volcast.connections import redis_client
from volcast.keys import Feed, RedisKeys
from volcast.settings import settings_from_mapping

FEED = Feed("binance", "NEAR/USDT", 60_000)


def heavy_tailed(n: int, seed: int, *, drift: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A model whose 0.1/0.9 band (log1p) is far too narrow for Student-t(2) errors whose scale
    also changes over time when ``drift``: raw coverage well below 0.8."""
    rng = np.random.default_rng(seed)
    level = 5.0 + np.sin(np.arange(n) / 500.0)
    scale = 0.3 * (1.0 + 2.0 * (np.arange(n) > n // 2)) if drift else np.full(n, 0.3)
    actual = np.maximum(level + scale * rng.standard_t(2, n), 0.0)
    return level - 0.2, level + 0.2, level, actual


@pytest.mark.parametrize("drift", [False, True])
def test_coverage_converges_to_nominal_on_a_heavy_tailed_stream(drift: bool) -> None:
    low, high, mid, actual = heavy_tailed(20_000, seed=7, drift=drift)
    raw = np.mean((actual >= low) & (actual <= high))
    lo, hi, calibrated = replay(low, high, mid, actual)
    assert raw < 0.6  # the raw band is badly miscalibrated
    assert not calibrated[:WARM_UP].any() and calibrated[WARM_UP:].all()
    late = slice(2_000, None)
    coverage = np.mean((actual[late] >= lo[late]) & (actual[late] <= hi[late]))
    below = np.mean(actual[late] < lo[late])
    assert abs(coverage - 0.8) < 0.015, coverage
    assert abs(below - 0.1) < 0.01, below  # each side on its own, not only the total
    # Over the second half alone (after a tripling of the error scale when drifting) as well.
    half = slice(12_000, None)
    assert abs(np.mean((actual[half] >= lo[half]) & (actual[half] <= hi[half])) - 0.8) < 0.02


def test_a_too_wide_band_is_narrowed() -> None:
    low, high, mid, actual = heavy_tailed(10_000, seed=3)
    lo, hi, _ = replay(low - 2.0, high + 2.0, mid, actual)
    assert np.mean((actual >= low - 2.0) & (actual <= high + 2.0)) > 0.95
    assert abs(np.mean((actual[1000:] >= lo[1000:]) & (actual[1000:] <= hi[1000:])) - 0.8) < 0.02
    assert np.mean(hi - lo) < 4.4


def test_one_step_moves_by_step_and_the_band_stays_sane() -> None:
    calibrator = BandCalibrator(horizons=2, warm_up=1)
    rows = calibrator.rows(["a", "b"])
    # a: the bar fell below the band (a miss low); b: inside.
    calibrator.update(rows, 0, np.array([2.0, 2.0]), np.array([3.0, 3.0]), np.array([1.0, 2.5]), 60_000)
    assert calibrator.c_low[rows[0], 0] == pytest.approx(STEP * 0.9)
    assert calibrator.c_low[rows[1], 0] == pytest.approx(-STEP * 0.1)
    assert calibrator.c_high[rows[0], 0] == pytest.approx(-STEP * 0.1)
    assert calibrator.n[rows, 1].tolist() == [0, 0]  # the other horizon untouched
    # A huge correction: low end not below 0 nor above the median, high end at most the bound.
    calibrator.c_low[rows, 0] = [-50.0, 50.0]
    calibrator.c_high[rows, 0] = [50.0, -50.0]
    lo, hi, ok = calibrator.band(rows, 0, np.array([2.0, 2.0]), np.array([3.0, 3.0]), np.array([2.5, 2.5]),
                                 np.array([4.0, 4.0]))
    assert ok.tolist() == [True, True]
    assert lo.tolist() == [2.5, 0.0] and hi.tolist() == [4.0, 2.5]
    # Not finite values are skipped by the update and keep the raw band.
    used = calibrator.update(rows, 1, np.array([math.nan, 1.0]), np.array([2.0, 2.0]), np.array([1.0, math.inf]))
    assert used == 0
    lo, hi, ok = calibrator.band(rows, 1, np.array([1.0, 1.0]), np.array([2.0, 2.0]), np.array([1.5, 1.5]),
                                 np.array([9.0, 9.0]))
    assert not ok.any() and lo.tolist() == [1.0, 1.0]


def test_a_bar_seen_again_is_not_learnt_twice() -> None:
    calibrator = BandCalibrator()
    row = calibrator.rows(["x"])
    one = (np.array([1.0]), np.array([2.0]), np.array([0.0]))
    assert calibrator.update(row, 0, *one, 60_000) == 1
    learnt = calibrator.c_low[row[0], 0]
    assert calibrator.update(row, 0, *one, 60_000) == 0  # the same bar (an event handled again)
    assert calibrator.update(row, 0, *one, 0) == 0  # an older one
    assert calibrator.c_low[row[0], 0] == learnt and calibrator.n[row[0], 0] == 1
    assert calibrator.update(row, 0, *one, 120_000) == 1


def test_a_row_twice_in_one_update_is_applied_in_order() -> None:
    once, twice = BandCalibrator(), BandCalibrator()
    a = once.rows(["x"])
    for actual in (0.0, 5.0):
        once.update(a, 0, np.array([1.0]), np.array([2.0]), np.array([actual]))
    b = twice.rows(["x"])
    twice.update(np.array([b[0], b[0]]), 0, np.array([1.0, 1.0]), np.array([2.0, 2.0]), np.array([0.0, 5.0]))
    assert twice.c_low[b[0], 0] == once.c_low[a[0], 0] and twice.c_high[b[0], 0] == once.c_high[a[0], 0]
    assert twice.n[b[0], 0] == 2
    # With the bars named: in order, and a bar repeated in the same update learnt once.
    named = BandCalibrator()
    c = named.rows(["x"])
    named.update(np.array([c[0]] * 3), 0, np.full(3, 1.0), np.full(3, 2.0), np.array([0.0, 5.0, 5.0]),
                 np.array([60_000, 120_000, 120_000]))
    assert named.c_low[c[0], 0] == once.c_low[a[0], 0] and named.n[c[0], 0] == 2


def test_state_fields_round_trip_and_bad_fields_are_refused() -> None:
    calibrator = BandCalibrator(horizons=3)
    row = int(calibrator.rows([FEED])[0])
    calibrator.c_low[row] = [0.1, -0.25, 1e-17]
    calibrator.c_high[row] = [0.3, 0.0, -2.5]
    calibrator.n[row] = [70, 3, 0]
    calibrator.to_ms[row] = [123_000, 60_000, -1]
    fields = calibrator.fields(row)
    other = BandCalibrator(horizons=3)
    assert other.load(FEED, fields)
    back = int(other.rows([FEED])[0])
    assert other.c_low[back].tolist() == calibrator.c_low[row].tolist()
    assert other.c_high[back].tolist() == calibrator.c_high[row].tolist()
    assert other.n[back].tolist() == [70, 3, 0] and other.to_ms[back].tolist() == [123_000, 60_000, -1]
    # Fewer horizons than saved: the first ones are kept.
    one = BandCalibrator(horizons=1)
    assert one.load(FEED, fields) and one.n[one.rows([FEED])[0]].tolist() == [70]
    # Every horizon is in ``packed`` (exact bits); the text fields hold horizon 0, which is all a
    # one-horizon reader (or ``volcast status``) reads.
    assert fields["c_low"] == "0.1" and fields["n"] == "70" and fields["to_ms"] == "123000" and "banded" not in fields
    state = unpack_state(fields["packed"])
    assert state is not None and state["c_low"] == [0.1, -0.25, 1e-17] and state["to_ms"] == [123_000, 60_000, -1]
    # A packed state that cannot be read falls back on the text fields: horizon 0 is kept.
    for broken in ("not base64!", fields["packed"][:-4], base64.b64encode(b"\0" * 47).decode(),
                   pack_one([0.1, math.nan, 0.0])):
        fallback = BandCalibrator(horizons=3)
        assert fallback.load(FEED, {**fields, "packed": broken}), broken
        kept = int(fallback.rows([FEED])[0])
        assert fallback.n[kept].tolist() == [70, 0, 0] and fallback.c_low[kept, 0] == 0.1
    # A worker of one horizon since wrote horizon 0 as text and left ``packed`` as it was: the
    # text's horizon 0 counts, the other horizons come from ``packed``.
    later = {**fields, "c_low": "0.5", "c_high": "0.75", "n": "90", "to_ms": "153000"}
    merged = BandCalibrator(horizons=3)
    assert merged.load(FEED, later)
    kept = int(merged.rows([FEED])[0])
    assert merged.c_low[kept].tolist() == [0.5, -0.25, 1e-17] and merged.n[kept].tolist() == [90, 3, 0]
    assert merged.to_ms[kept].tolist() == [153_000, 60_000, -1] and merged.c_high[kept, 0] == 0.75
    # A state written as comma-separated text (before ``packed``) is read whole.
    text = {"horizons": "3", "c_low": "0.1,-0.25,1e-17", "c_high": "0.3,0.0,-2.5", "n": "70,3,0",
            "to_ms": "123000,60000,-1", "banded": "0,5,6", "covered": "0,4,5"}
    old = BandCalibrator(horizons=3)
    assert old.load(FEED, text)
    back = int(old.rows([FEED])[0])
    assert old.c_low[back].tolist() == [0.1, -0.25, 1e-17] and old.covered[back].tolist() == [0, 4, 5]
    plain = {k: v for k, v in fields.items() if k != "packed"}
    for bad in ({}, {**text, "c_low": "0.1,nan,0"}, {**text, "n": "1,2"}, {**plain, "c_high": "x"}):
        assert not BandCalibrator(horizons=3).load(FEED, bad)


def pack_one(c_low: list[float]) -> str:
    """A packed state of len(c_low) horizons with these low corrections (the rest 0)."""
    calibrator = BandCalibrator(horizons=len(c_low))
    row = int(calibrator.rows([FEED])[0])
    calibrator.c_low[row] = c_low
    return calibrator.packed(np.array([row]))[0]


def test_a_packed_state_is_exact_and_the_same_made_for_many_rows_or_one() -> None:
    """1000 rows of 63 horizons packed at once give, row by row, what each gives alone, and read
    back bit for bit (the worker packs a boundary's feeds at once; ``volcast status`` and a
    restarted worker read one)."""
    rng = np.random.default_rng(5)
    calibrator = BandCalibrator(horizons=63)
    rows = calibrator.rows([f"feed-{i}" for i in range(1000)])
    calibrator.c_low[rows] = rng.standard_normal((1000, 63)) * 1e-3
    calibrator.c_high[rows] = rng.standard_normal((1000, 63))
    calibrator.n[rows] = rng.integers(0, 10**6, (1000, 63))
    calibrator.to_ms[rows] = rng.integers(-1, 2**53, (1000, 63))
    calibrator.banded[rows] = rng.integers(0, 10**6, (1000, 63))
    calibrator.covered[rows] = rng.integers(0, 10**6, (1000, 63))
    packed = calibrator.packed(rows)
    assert packed[17] == calibrator.packed(rows[17:18])[0] and packed[999] == calibrator.packed(rows[999:])[0]
    for i in (0, 17, 999):
        state = unpack_state(packed[i])
        assert state is not None
        for name in ("c_low", "c_high", "n", "to_ms", "banded", "covered"):
            assert state[name] == getattr(calibrator, name)[rows[i]].tolist(), name
    other = BandCalibrator(horizons=63)
    assert other.load("feed-17", calibrator.fields(int(rows[17])))
    back = int(other.rows(["feed-17"])[0])
    assert other.c_high[back].tobytes() == calibrator.c_high[rows[17]].tobytes()
    assert other.covered[back].tolist() == calibrator.covered[rows[17]].tolist()


@pytest.fixture
async def redis_keys(redis_config: dict[str, Any]) -> AsyncIterator[tuple[object, RedisKeys]]:
    settings = settings_from_mapping({"exchanges": [{"id": "binance", "symbols": ["NEAR/USDT"]}],
                                     "redis": {**redis_config, "key_prefix": f"test-cal-{uuid.uuid4().hex[:10]}"}},
                                     env={})
    keys = RedisKeys(settings.redis.key_prefix)
    async with redis_client(settings.redis) as redis:
        yield redis, keys
        found = [k async for k in redis.scan_iter(match=f"{settings.redis.key_prefix}:*")]
        if found:
            await redis.delete(*found)


async def test_restart_restores_the_state_from_redis(redis_keys: tuple[object, RedisKeys]) -> None:
    redis, keys = redis_keys
    low, high, mid, actual = heavy_tailed(WARM_UP + 40, seed=11)
    raw = [{0.1: float(np.expm1(lo)), 0.5: float(np.expm1(m)), 0.9: float(np.expm1(hi))}
           for lo, hi, m in zip(low, high, mid, strict=True)]
    first = Calibration(redis, keys, 60_000)  # type: ignore[arg-type]
    await first.ensure([FEED])
    for t in range(WARM_UP + 20):
        first.realised(FEED, t * 60_000, raw[t], float(np.expm1(actual[t])))
        writes = first.writes()
        for write in writes:  # as the recorder's script applies them
            assert write[0] == "h"
            await redis.hset(write[1], mapping=dict(zip(write[2::2], write[3::2], strict=True)))  # type: ignore[attr-defined]
    forecast = Forecast(raw[-1][0.5], raw[-1], bound=1e12)
    published, kept, calibrated = first.bands([FEED], [forecast])[0]
    assert calibrated and kept == raw[-1] and published != raw[-1]

    # A new process: nothing in memory, the state is read back and gives the same band.
    second = Calibration(redis, keys, 60_000)  # type: ignore[arg-type]
    await second.ensure([FEED])
    assert second.bands([FEED], [forecast])[0] == (published, kept, True)
    row = int(second.calibrator.rows([FEED])[0])
    assert second.calibrator.n[row, 0] == WARM_UP + 20
    assert not second.stale(FEED, (WARM_UP + 20) * 60_000)  # it follows on from the last bar
    assert second.stale(FEED, (WARM_UP + 25) * 60_000)  # another worker had the bars between

    # A feed Redis holds no state for starts fresh, its band raw until the warm-up is over.
    other = Feed("binance", "ALGO/USDT", 60_000)
    await second.ensure([other])
    assert second.bands([other], [forecast])[0] == (raw[-1], None, False)


def test_a_band_the_guard_refuses_is_published_raw() -> None:
    calibration = Calibration(None, RedisKeys("x"), 60_000)  # type: ignore[arg-type]
    row = int(calibration.calibrator.rows([FEED])[0])
    calibration.calibrator.n[row, 0] = WARM_UP
    calibration.calibrator.c_high[row, 0] = 1.0
    quantiles = {0.1: 5.0, 0.5: 10.0, 0.9: 20.0}
    wide = calibration.bands([FEED], [Forecast(10.0, quantiles, bound=1e9)])[0]
    assert wide[2] and wide[0][0.9] == pytest.approx(math.expm1(math.log1p(20.0) + 1.0))
    capped = calibration.bands([FEED], [Forecast(10.0, quantiles, bound=30.0)])[0]
    assert capped[2] and capped[0][0.9] == pytest.approx(30.0)  # up to the guard's bound
    # A forecast without a band (a baseline) or with a quantile not finite: as it came.
    assert calibration.bands([FEED], [Forecast(10.0, {})])[0] == ({}, None, False)
    nan = {0.1: math.nan, 0.5: 10.0, 0.9: 20.0}
    assert calibration.bands([FEED], [Forecast(10.0, nan, bound=1e9)])[0] == (nan, None, False)


def test_every_target_of_a_multi_horizon_backtest_converges_learning_only_what_is_realised() -> None:
    """Three targets: the next bar, the bar after it, and the sum of the next 5 (realised 1, 2
    and 5 positions later); each band far too narrow, each calibrated to 0.80 on its own."""
    rng = np.random.default_rng(5)
    positions = 8_000
    level = 4.0 + np.sin(np.arange(positions) / 300.0)
    errors = rng.standard_t(3, (positions, 3)) * np.array([0.3, 0.5, 0.2])
    actual = np.maximum(level[:, None] + errors, 0.0)
    low, high, mid = level[:, None] - 0.1 + 0 * actual, level[:, None] + 0.1 + 0 * actual, level[:, None] + 0 * actual
    lo, hi, calibrated = replay_targets(low, high, mid, actual, np.array([1, 2, 5]))
    assert not calibrated[:WARM_UP].any() and calibrated[WARM_UP + 5:].all()
    inside = (actual[1500:] >= lo[1500:]) & (actual[1500:] <= hi[1500:])
    assert np.all(np.abs(inside.mean(axis=0) - 0.8) < 0.015), inside.mean(axis=0)
    # Nothing realised later is learnt early: the first forecast's bands are the raw ones, and a
    # target realised 5 positions later has learnt 5 fewer bars than the next bar by the end.
    assert lo[0].tolist() == low[0].tolist()
    single = replay_targets(low[:, :1], high[:, :1], mid[:, :1], actual[:, :1], np.array([1]))
    assert np.array_equal(single[0][:, 0], lo[:, 0])  # the next bar's band as if alone


def test_the_live_horizon_bands_learn_as_the_backtest_does() -> None:
    """A feed forecast at every boundary for 3 coming bars and the 5-bar sum: what the worker's
    Calibration publishes (once every target is past its warm-up) equals ``replay_targets`` on
    the same forecasts, each target learnt only when its window has closed."""
    from forecaster.horizons import Horizons
    from forecaster.payload import HorizonValues

    spec = Horizons(3, (("5m", 5),))
    rng = np.random.default_rng(2)
    steps, minute = 400, 60_000
    volume = np.exp(3.0 + rng.standard_t(3, steps + 10) * 0.6)
    # Raw bands (volume) too narrow around a level of e^3 per bar, 5 e^3 for the sum.
    per_bar = np.array([math.exp(3.0 - 0.3), math.exp(3.0), math.exp(3.0 + 0.3)])
    window = per_bar * 5
    calibration = Calibration(None, RedisKeys("x"), minute, spec)  # type: ignore[arg-type]
    calibration.calibrator.warm_up = 20
    published: list[np.ndarray] = []
    made: list[bool] = []
    for k in range(steps):
        bars = [per_bar.tolist()] * 3
        values = HorizonValues([float(per_bar[1])] * 3, {q: [bars[i][n] for i in range(3)] for n, q in
                                                        enumerate((0.1, 0.5, 0.9))},
                               {"5m": (float(window[1]), {0.1: float(window[0]), 0.5: float(window[1]),
                                                           0.9: float(window[2])})})
        forecast = Forecast(float(per_bar[1]), {0.1: per_bar[0], 0.5: per_bar[1], 0.9: per_bar[2]}, None, values, 1e12)
        curve = calibration.horizon_bands([FEED], [forecast], k * minute)[0]
        made.append(curve is not None)
        hv = curve or values
        published.append(np.array([[*hv.quantiles[0.1], hv.sums["5m"][1][0.1]],
                                   [*hv.quantiles[0.9], hv.sums["5m"][1][0.9]]]))
        # Bar k + 1 closes: the next bar's record and every target that ends with it.
        closed = (k + 1) * minute
        calibration.closed(FEED, closed, float(volume[k + 1]))
        calibration.realised(FEED, closed, forecast.quantiles, float(volume[k + 1]))
        calibration.writes()
    low = np.log1p(np.array([[*per_bar[[0]].tolist() * 3, window[0]]] * steps))
    high = np.log1p(np.array([[*per_bar[[2]].tolist() * 3, window[2]]] * steps))
    mid = np.log1p(np.array([[*per_bar[[1]].tolist() * 3, window[1]]] * steps))
    sums = np.convolve(volume, np.ones(5))[4:]  # sums[i] = volume[i..i+4]
    actual = np.log1p(np.stack([volume[1:steps + 1], volume[2:steps + 2], volume[3:steps + 3],
                                sums[1:steps + 1]], axis=1))
    # The 5-bar sum learns with its own, smaller step, live as in the backtest.
    lo, hi, calibrated = replay_targets(low, high, mid, actual, np.array([1, 2, 3, 5]), warm_up=20,
                                        windows=np.array([1, 1, 1, 5]))
    first = made.index(True)
    assert 20 <= first <= 30 and all(made[first:])  # the 5-bar sum warms up last
    after = first  # the backtest calibrates each target from its own warm-up, the worker all at once
    assert calibrated[after:].all()
    ours = np.log1p(np.array(published[after:]))
    assert np.abs(ours[:, 0] - lo[after:]).max() < 1e-4, np.abs(ours[:, 0] - lo[after:]).max()
    assert np.abs(ours[:, 1] - hi[after:]).max() < 1e-4, np.abs(ours[:, 1] - hi[after:]).max()
    row = int(calibration.calibrator.rows([FEED])[0])
    # Forecasts 0..399, bars closed up to 400: a target realised d bars on is counted 401 - d times.
    assert calibration.calibrator.banded[row].tolist() == [0, steps - 1, steps - 2, steps - 4]


def test_a_window_of_k_bars_moves_its_correction_by_the_step_over_root_k() -> None:
    """A miss of a 4-bar window moves its correction by 0.9 x STEP / 2 (WINDOW_POWER 0.5), a
    single bar's by 0.9 x STEP: overlapping windows miss in runs, a full step each overshoots."""
    calibrator = BandCalibrator(horizons=2, windows=[1, 4])
    row = calibrator.rows([FEED])
    both = np.array([0, 1])
    calibrator.update(np.repeat(row, 2), both, np.zeros(2), np.ones(2), np.full(2, 5.0))  # above both
    assert np.allclose(calibrator.c_high[row[0]], [0.9 * STEP, 0.9 * STEP / 2])
    assert np.allclose(calibrator.c_low[row[0]], [-0.1 * STEP, -0.1 * STEP / 2])
    _, hi, _ = replay_targets(np.zeros((3, 2)), np.ones((3, 2)), np.full((3, 2), 0.5), np.full((3, 2), 5.0),
                               np.array([1, 1]), warm_up=0, windows=np.array([1, 4]))
    assert np.allclose(hi[2], [1 + 2 * 0.9 * STEP, 1 + 2 * 0.9 * STEP / 2])
    with pytest.raises(ValueError, match="windows"):
        BandCalibrator(horizons=2, windows=[1, 0])
