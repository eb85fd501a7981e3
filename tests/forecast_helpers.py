"""Shared helpers of the forecaster tests: the small real bars file and tiny settings."""

from __future__ import annotations

from pathlib import Path

from forecaster.frame import BarFrame
from volcast.settings import ModelSettings, TrainingSettings

DATA = Path(__file__).parent / "data"
NEAR = DATA / "binance-usdm_NEARUSDT_1m_2023-02-01_03.csv.gz"
KEY = "binance-usdm_NEARUSDT"

TINY_MODEL = ModelSettings(look_back=16, hidden=8, quantiles=(0.1, 0.5, 0.9))
TINY_TRAINING = TrainingSettings(epochs=2, batch_size=256, patience=0, seed=7, threads=1)


def near() -> BarFrame:
    return BarFrame.from_csv(NEAR)
