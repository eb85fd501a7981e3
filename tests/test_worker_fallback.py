"""The no-model fallback on real bars: sensible from the first bar, HAR once histories allow it."""

from __future__ import annotations

from worker_harness import NEAR

from forecaster.fallback import FallbackBaseline
from forecaster.frame import BarFrame


def test_fallback_tracks_the_data_from_a_few_bars_and_switches_to_har_after_a_refit() -> None:
    frame = BarFrame.from_csv(NEAR)
    fallback = FallbackBaseline(refit_every=3, min_har_bars=240)
    fallback.refit([("binance:NEAR/USDT", frame[:5])])  # a fresh stack: five bars
    assert fallback.har is None  # too short for HAR: EWMA serves
    forecasts = []
    for end in range(5, 40):
        history = frame[:end]
        predictor = fallback.choose(len(history))
        assert predictor.name == "ewma"
        forecasts.append(predictor.predict([("binance:NEAR/USDT", history)])[0].volume)
    assert len(set(forecasts)) > 20  # follows the bars instead of one constant
    for _ in range(3):
        fallback.served()
    assert fallback.refit_due
    fallback.refit([("binance:NEAR/USDT", frame[:600])])
    assert fallback.har is not None and not fallback.refit_due
    har = [fallback.choose(end).predict([("binance:NEAR/USDT", frame[:end])])[0].volume for end in range(600, 630)]
    assert fallback.choose(600).name == "har" and len(set(har)) > 20
    assert fallback.choose(10).name == "ewma"  # short feeds still get EWMA
