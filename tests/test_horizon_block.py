"""The chunk's horizons JSON (forecaster/horizon_block.py) is byte for byte what each row's
``HorizonValues.document()`` serialises to (whole numbers as integers, ``payload.whole_numbers``),
and the fast rounding is the plain one, bit for bit."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from forecaster.horizon_block import HorizonBlock, _round_significant_any, round_significant
from forecaster.horizons import Horizons
from forecaster.payload import HorizonValues, NonFiniteError, Prediction, whole_numbers
from volcast.keys import Feed

SPEC = Horizons(60, (("5m", 5), ("15m", 15), ("1h", 60)))


def _values(rng: np.random.Generator, shape: tuple[int, ...], low: float = -25, high: float = 45) -> np.ndarray:
    # Volumes over many magnitudes, zeros and whole numbers among them.
    out = np.exp(rng.uniform(low, high, shape))
    out.flat[::17] = 0.0
    out.flat[5::23] = np.round(out.flat[5::23])
    return round_significant(out)


def _eager(hv: HorizonValues) -> HorizonValues:
    return HorizonValues([float(x) for x in hv.volume], {q: [float(x) for x in v] for q, v in hv.quantiles.items()},
                         dict(hv.sums))


def _document_json(hv: HorizonValues) -> bytes:
    return whole_numbers(orjson.dumps(hv.document(), option=orjson.OPT_SERIALIZE_NUMPY))


@pytest.mark.parametrize("magnitudes", [
    (-25, 45),  # rows of every kind of number: written as floats
    (9.3, 36.0),  # 10,900 to 4.3e15: whole at 5 digits, rows written from integers
    (6.0, 12.0),  # 400 to 160,000: some rows whole, some not
])
@pytest.mark.parametrize(("levels", "spec"), [
    ((0.1, 0.5, 0.9), SPEC),
    ((0.05, 0.5, 0.95, 0.99), Horizons(3, (("2m", 2),))),
    ((), SPEC),
    ((0.1, 0.5, 0.9), Horizons(4, ())),
])
def test_block_json_is_the_documents_bytes(levels: tuple[float, ...], spec: Horizons,
                                           magnitudes: tuple[float, float]) -> None:
    rng = np.random.default_rng(7)
    n, t = 40, len(spec.targets)
    volume = _values(rng, (n, t), *magnitudes)
    quantiles = _values(rng, (n, len(levels), t), *magnitudes) if levels else None
    rows = HorizonBlock(volume, quantiles, levels, spec).rows()
    for hv in rows:
        made = hv.json()
        assert made is not None
        assert made == _document_json(hv)
        assert made == whole_numbers(orjson.dumps(_eager(hv).document()))  # as Python floats too
        assert orjson.loads(made) == orjson.loads(orjson.dumps(_eager(hv).document()))
        assert hv == _eager(hv)
        assert b".0," not in made and b".0]" not in made and b".0}" not in made


def test_whole_numbers_are_integers_and_read_back_the_same() -> None:
    out = whole_numbers(orjson.dumps({"volume": [112830.0, 0.0, 12.5, 1.0e16, 2.5e-7, 10.05],
                                      "quantiles": {"0.1": [3.0], "0.9": [40.0]},
                                      "sums": {"1.0h": {"volume": 7.0, "quantiles": {"0.5": 10.0}}}}))
    assert out == (b'{"volume":[112830,0,12.5,1e+16,2.5e-7,10.05],"quantiles":{"0.1":[3],"0.9":[40]},'
                   b'"sums":{"1.0h":{"volume":7,"quantiles":{"0.5":10}}}}')
    assert orjson.loads(out)["volume"] == [112830.0, 0.0, 12.5, 1.0e16, 2.5e-7, 10.05]


def test_a_block_row_that_is_not_finite_is_refused() -> None:
    """Whole rows are written from integers, which cannot say NaN: a row with a NaN or an
    infinity is written as floats, ``null``, and its payload refused (the last line behind the guard)."""
    volume = _values(np.random.default_rng(2), (3, len(SPEC.targets)), 10.0, 20.0)
    volume[1, 7], volume[2, -1] = np.nan, np.inf
    rows = HorizonBlock(volume, None, (), SPEC).rows()
    assert b"null" not in (rows[0].json() or b"")
    for hv in rows[1:]:
        p = Prediction(Feed("binance", "BTC/USDT", 60_000), 120_000, 60_000, 3.5, 4.25, {}, "lstm", "7", False, 123,
                       horizons=hv)
        with pytest.raises(NonFiniteError):
            p.to_json()
    # The search for a null of the next-bar fields stops before the horizons: it still sees them.
    for next_volume, last in ((np.nan, 3.5), (4.25, np.inf)):  # not ``volume``: the array above
        p = Prediction(Feed("binance", "BTC/USDT", 60_000), 120_000, 60_000, last, next_volume, {0.1: 1.0}, "lstm", "7",
                       False, 123, horizons=rows[0])
        with pytest.raises(NonFiniteError):
            p.to_json()


def test_payload_with_block_horizons_is_unchanged() -> None:
    rng = np.random.default_rng(3)
    levels = (0.1, 0.5, 0.9)
    block = HorizonBlock(_values(rng, (5, len(SPEC.targets))), _values(rng, (5, 3, len(SPEC.targets))), levels, SPEC)
    for hv in block.rows():
        lazy = Prediction(Feed("binance", "BTC/USDT", 60_000), 120_000, 60_000, 3.5, 4.25,
                          {0.1: 1.0, 0.5: 4.0, 0.9: 9.5}, "lstm", "7", False, 123, horizons=hv)
        plain = Prediction(Feed("binance", "BTC/USDT", 60_000), 120_000, 60_000, 3.5, 4.25,
                           {0.1: 1.0, 0.5: 4.0, 0.9: 9.5}, "lstm", "7", False, 123, horizons=_eager(hv))
        assert lazy.to_json() == plain.to_json()
        assert Prediction.from_json(lazy.to_json()) == plain


def test_empty_block() -> None:
    block = HorizonBlock(np.zeros((0, len(SPEC.targets))), np.zeros((0, 3, len(SPEC.targets))), (0.1, 0.5, 0.9), SPEC)
    assert block.rows() == []


def test_fast_rounding_is_the_plain_one_bit_for_bit() -> None:
    rng = np.random.default_rng(11)
    values = np.concatenate([np.exp(rng.uniform(-700, 700, 200_000)), np.exp(rng.uniform(-30, 40, 200_000)),
                             [0.0, 1.0, 9.99995, 99999.5, 1e-300, 5e-324, 1.7e308], rng.integers(0, 10**9, 1000)])
    fast, plain = round_significant(values), _round_significant_any(values, 5)
    assert np.array_equal(fast.view(np.int64), plain.view(np.int64))


def test_rounding_of_values_that_are_not_finite() -> None:
    out = round_significant(np.array([np.nan, np.inf, 12345.678]))
    assert np.isnan(out[0]) and np.isnan(out[1]) and out[2] == 12346.0


@pytest.mark.parametrize(("low", "high"), [(-20.0, 9.0), (12.0, 700.0)])
def test_fast_rounding_with_every_number_on_one_side(low: float, high: float) -> None:
    values = np.exp(np.random.default_rng(5).uniform(low, high, 50_000))  # all scaled up, or all down
    fast, plain = round_significant(values), _round_significant_any(values, 5)
    assert np.array_equal(fast.view(np.int64), plain.view(np.int64))


def test_calibrated_horizon_bands_of_a_block_are_those_of_its_values() -> None:
    """The hand-over's calibrated horizons (calibrate_horizons) read a chunk's block as it is and
    publish a block of the calibrated rows: the same numbers, state and bytes as from the values."""
    from forecaster.calibration import BandCalibrator
    from forecaster.calibration_horizons import HorizonBands
    from forecaster.calibration_store import Calibration
    from forecaster.predictor import Forecast
    from volcast.keys import RedisKeys

    spec = Horizons(3, (("5m", 5),))
    rng = np.random.default_rng(9)
    n, t = 30, len(spec.targets)
    volume = _values(np.random.default_rng(1), (n, t)) + 1.0
    base = np.exp(rng.uniform(2, 6, (n, 1, t)))
    quantiles = round_significant(base * np.array([0.6, 1.0, 1.7])[None, :, None])
    block = HorizonBlock(volume, quantiles, (0.1, 0.5, 0.9), spec)
    feeds = [Feed("binance", f"S{i}/USDT", 60_000) for i in range(n)]
    runs: list[tuple[list[HorizonValues | None], BandCalibrator, HorizonBands | None]] = []
    for rows in (block.rows(), [_eager(hv) for hv in block.rows()]):
        calibration = Calibration(None, RedisKeys("x"), 60_000, spec)  # type: ignore[arg-type]
        calibrator = calibration.calibrator
        calibrator.rows(feeds)
        calibrator.n[:] = calibrator.warm_up  # past the warm-up, with corrections of their own
        calibrator.c_low[:n] = rng.uniform(0, 0.3, (n, t)) if not runs else runs[0][1].c_low[:n]
        calibrator.c_high[:n] = rng.uniform(0, 0.3, (n, t)) if not runs else runs[0][1].c_high[:n]
        calibrator.n[3] = 0  # one feed still warming up: its own band
        forecasts = [Forecast(float(volume[i, 0]), {0.1: 1.0, 0.5: 2.0, 0.9: 3.0}, None, hv, 1e9)
                     for i, hv in enumerate(rows)]
        runs.append((calibration.horizon_bands(feeds, forecasts, 120_000), calibrator, calibration.horizons))
    (fast, _, fast_bands), (plain, _, plain_bands) = runs
    assert [x is None for x in fast] == [x is None for x in plain] and fast[3] is None and fast[0] is not None
    for a, b in zip(fast, plain, strict=True):
        if a is not None and b is not None:
            assert a == b and a.json() == _document_json(b)
    assert fast_bands is not None and plain_bands is not None
    assert np.array_equal(fast_bands.published, plain_bands.published)
    assert np.array_equal(fast_bands.raw, plain_bands.raw)
