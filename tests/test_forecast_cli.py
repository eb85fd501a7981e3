"""`volcast train`, `backtest` and `tune` end to end on the small real bars file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from forecast_helpers import NEAR


def run(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "volcast.cli", *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=280, check=False)


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yml"
    path.write_text(
        "exchanges: [{id: binance, symbols: [NEAR/USDT]}]\n"
        "model: {look_back: 16, hidden: 8}\n"
        "training: {epochs: 1, batch_size: 256, patience: 0}\n"
    )
    return path


def test_train_then_backtest_the_artifact(tmp_path: Path, config: Path) -> None:
    out = tmp_path / "model"
    trained = run("train", "--bars", str(NEAR), "--config", str(config), "--out", str(out), "--version", "t1",
                  cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert "epoch 1/1" in trained.stderr
    assert json.loads((out / "meta.json").read_text())["version"] == "t1"
    plot = tmp_path / "plot.png"
    bt = run("backtest", str(NEAR), "--artifact", str(out), "--config", str(config), "--json",
             "--plot", str(plot), cwd=tmp_path)
    assert bt.returncode == 0, bt.stderr
    result = json.loads(bt.stdout)
    assert result["bars"] == 4320 and result["test_bars"] == 4320 - int(4320 * 0.7)
    assert set(result["models"]) == {"naive", "ewma", "tod", "har", "lstm"}
    assert result["models"]["naive"]["mase"] == pytest.approx(1.0)
    assert "coverage_80" in result["models"]["lstm"]
    # The band as published live: calibrated online through the test part, past its warm-up.
    assert 0.0 <= result["models"]["lstm"]["coverage_80_calibrated"] <= 1.0
    assert result["models"]["lstm"]["calibrated_share"] > 0.9
    assert plot.stat().st_size > 10_000
    from PIL import Image

    with Image.open(plot) as image:  # the title, also stored as the PNG's Title
        title = image.info["Title"]
    lstm = result["models"]["lstm"]
    assert f"lstm rmse_log {lstm['rmse_log']:.4f}, MASE {lstm['mase']:.3f}" in title
    assert "har rmse_log" in title and "naive rmse_log" in title
    # Every horizon and window of the same artifact against HAR direct on the same forecasts.
    bt = run("backtest", str(NEAR), "--artifact", str(out), "--config", str(config), "--json", "--horizons",
             cwd=tmp_path)
    assert bt.returncode == 0, bt.stderr
    horizons = json.loads(bt.stdout)["horizons"]
    assert horizons["bars"] == 60 and horizons["sums"] == {"5m": 5, "15m": 15, "1h": 60}
    assert set(horizons["models"]) == {"naive", "tod", "har", "lstm"}
    for scores in horizons["models"].values():
        assert len(scores["horizons"]) == 60 and set(scores["sums"]) == {"5m", "15m", "1h"}
        assert scores["forecasts"] == horizons["models"]["har"]["forecasts"] > 1000
    assert all(h["mase"] == pytest.approx(1.0) for h in horizons["models"]["naive"]["horizons"])
    assert "coverage_80" in horizons["models"]["lstm"]["horizons"][59]
    # The bands as published live, calibrated per horizon (learnt once each window closed).
    curve = horizons["models"]["lstm"]
    assert all(0.0 <= cell["coverage_80_calibrated"] <= 1.0 for cell in [*curve["horizons"], *curve["sums"].values()])
    assert "coverage_80_calibrated" not in horizons["models"]["har"]["horizons"][0]  # no band, nothing to calibrate
    assert "sum_of_bars_rmse_log" in horizons["models"]["lstm"]["sums"]["1h"]
    ratio = horizons["ratio_to_har"]["horizons"][0]
    assert ratio == horizons["models"]["lstm"]["horizons"][0]["rmse_log"] / horizons["models"]["har"]["horizons"][0][
        "rmse_log"]
    table = run("backtest", str(NEAR), "--artifact", str(out), "--config", str(config), "--horizons", cwd=tmp_path)
    assert table.returncode == 0 and "+60" in table.stdout and "1h" in table.stdout, table.stderr
    # The same artifact under other settings is refused with a clear message.
    refused = run("backtest", str(NEAR), "--artifact", str(out), "--config", str(config), "--json",
                  "--model", "seed", cwd=tmp_path)
    assert refused.returncode == 2  # argparse: --model and --artifact exclude each other


def test_backtest_trains_the_seed(tmp_path: Path, config: Path) -> None:
    bt = run("backtest", str(NEAR), "--model", "seed", "--epochs", "1", "--config", str(config), "--json",
             cwd=tmp_path)
    assert bt.returncode == 0, bt.stderr
    assert "seed" in json.loads(bt.stdout)["models"]
    one_step = run("backtest", str(NEAR), "--model", "seed", "--horizons", "--config", str(config), cwd=tmp_path)
    assert one_step.returncode == 2 and "forecasts the next bar only" in one_step.stderr


def test_tune_prints_yaml(tmp_path: Path, config: Path) -> None:
    import yaml

    tuned = run("tune", str(NEAR), "--trials", "1", "--folds", "1", "--epochs", "1", "--config", str(config),
                cwd=tmp_path)
    assert tuned.returncode == 0, tuned.stderr
    block = yaml.safe_load(tuned.stdout)
    assert set(block) == {"model", "training"} and "hidden" in block["model"]
