"""`volcast backtest --plot-hour`: one forecast of the coming hour, on the small real bars file."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from forecast_helpers import KEY, NEAR, TINY_MODEL, TINY_TRAINING, near

from forecaster.horizon_scoring import baseline_forecasts
from forecaster.training import train_model
from volcast.commands.hour_curve import choose_position, hour_curve, parse_at

AT = "2023-02-03T14:07"


def test_the_forecast_at_a_moment_reads_nothing_after_it() -> None:
    frame = near()
    split = int(len(frame) * 0.7)
    train = [(KEY, frame[:split])]
    model = train_model(train, TINY_MODEL, TINY_TRAINING).model
    spec = model.horizon_spec
    har = baseline_forecasts(spec, train)["har"]
    test_range = (split, len(frame))
    position = choose_position(frame, test_range, spec, model.min_history, parse_at(AT))
    assert int(frame.open_time_ms[position]) == parse_at(AT)
    curve = hour_curve(model, "lstm", har, KEY, frame, test_range, position)

    # What traded: each coming bar, and each window's sum from the forecast bar on.
    assert curve.actual[0] == frame.volume[position] and curve.actual[59] == frame.volume[position + 59]
    assert curve.actual[spec.bars + 2] == pytest.approx(frame.volume[position : position + 60].sum())
    assert np.isfinite(curve.model).all() and (curve.model >= 0).all() and np.isfinite(curve.har).all()
    # The band as published: calibrated from the test part's earlier, closed windows.
    assert curve.calibrated and (curve.low <= curve.high).all()

    # Every bar from the forecast moment on replaced: the forecast, its band and HAR's are the same.
    volume = frame.volume.copy()
    volume[position:] *= 10.0
    later = hour_curve(model, "lstm", har, KEY, dataclasses.replace(frame, volume=volume), test_range, position)
    for name in ("model", "low", "high", "har"):
        assert np.array_equal(getattr(later, name), getattr(curve, name)), name
    assert later.actual[0] == 10.0 * curve.actual[0]
    # A change one bar earlier is seen (the test above could not pass by ignoring the bars).
    volume[position - 1] *= 10.0
    earlier = hour_curve(model, "lstm", har, KEY, dataclasses.replace(frame, volume=volume), test_range, position)
    assert not np.array_equal(earlier.model, curve.model)


def test_choose_position_defaults_to_the_last_whole_hour_and_refuses_a_moment_outside() -> None:
    frame = near()
    split = int(len(frame) * 0.7)
    from forecaster.horizons import Horizons

    spec = Horizons(60, (("5m", 5), ("15m", 15), ("1h", 60)))
    position = choose_position(frame, (split, len(frame)), spec, 16, None)
    assert int(frame.open_time_ms[position]) % 3_600_000 == 0
    assert position + 60 <= len(frame) < position + 120
    with pytest.raises(ValueError, match="outside the test part"):
        choose_position(frame, (split, len(frame)), spec, 16, parse_at("2023-02-01T12:00"))
    with pytest.raises(ValueError, match="no bar opens at 2023-02-03T14:07:30"):
        choose_position(frame, (split, len(frame)), spec, 16, parse_at("2023-02-03T14:07:30"))
    with pytest.raises(ValueError, match="is not a time"):
        parse_at("yesterday")


def test_backtest_plot_hour_end_to_end(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text("exchanges: [{id: binance, symbols: [NEAR/USDT]}]\n"
                      "model: {look_back: 16, hidden: 8}\n"
                      "training: {epochs: 1, batch_size: 256, patience: 0}\n")
    plot = tmp_path / "hour.png"

    def backtest(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "volcast.cli", "backtest", str(NEAR), "--config", str(config),
                               *argv], cwd=tmp_path, capture_output=True, text=True, timeout=280, check=False)

    done = backtest("--plot-hour", str(plot), "--at", AT, "--json")
    assert done.returncode == 0, done.stderr
    curve = json.loads(done.stdout)["hour_curve"]
    assert curve["at"] == "2023-02-03T14:07:00+00:00" and curve["band_calibrated"] is True
    assert set(curve["forecast"]) == {*(f"+{h}" for h in range(1, 61)), "5m", "15m", "1h"}
    frame = near()
    row = int(np.searchsorted(frame.open_time_ms, parse_at(AT)))
    assert curve["actual"]["+1"] == frame.volume[row]
    assert curve["actual"]["1h"] == pytest.approx(frame.volume[row : row + 60].sum())
    assert all(curve["low_80"][k] <= curve["high_80"][k] for k in curve["forecast"])
    assert plot.stat().st_size > 10_000
    from PIL import Image

    with Image.open(plot) as image:
        assert "made at 2023-02-03T14:07 UTC" in image.info["Title"]
    # The table for a reader, and the mistakes a user can make, each told before any training.
    table = backtest("--plot-hour", str(plot))
    assert table.returncode == 0 and "forecast made at 2023-02-03T23:00 UTC" in table.stdout, table.stderr
    outside = backtest("--plot-hour", str(plot), "--at", "2023-02-01T12:00")
    assert outside.returncode == 2 and "outside the test part" in outside.stderr and "epoch" not in outside.stderr
    alone = backtest("--at", AT)
    assert alone.returncode == 2 and "give --plot-hour FILE.png too" in alone.stderr
    seed = backtest("--plot-hour", str(plot), "--model", "seed")
    assert seed.returncode == 2 and "forecasts the next bar only" in seed.stderr
