"""Market-wide inputs (forecaster/market.py) on small real bars: the values, no lookahead, the
single-feed fallback, and the same inputs offline (training, backtest) and live (the bar matrix)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from forecast_helpers import TINY_TRAINING
from worker_harness import symbol_bars

from forecaster.bar_matrix import COLUMNS, BarMatrix
from forecaster.features import HAR_HISTORY, Batch
from forecaster.frame import BarFrame
from forecaster.lstm_model import LstmModel
from forecaster.market import FEED_CLIP, MARKET_FEATURES, at_boundary, attach, input_names
from forecaster.training import train_model
from forecaster.training_loop import quiet
from volcast.keys import Feed
from volcast.settings import ModelSettings

MINUTE = 60_000
KEYS = ("binance:NEAR/USDT", "binance:ALGO/USDT", "okx:FIL/USDT")


def frames(n: int = 3) -> list[tuple[str, BarFrame]]:
    """Three feeds over the same open times: the real NEAR/USDT bars, shifted by hours per feed."""
    return [(KEYS[i], BarFrame.from_bars(symbol_bars(i), MINUTE)) for i in range(n)]


def relative(frame: BarFrame, p: int) -> np.ndarray:
    """STATS of one feed for target p, by hand (last, mean_5, mean_15, mean_60, day_ago)."""
    lv = np.log1p(frame.volume)
    level = lv[p - HAR_HISTORY : p].mean()
    stats = [lv[p - 1], lv[p - 5 : p].mean(), lv[p - 15 : p].mean(), lv[p - 60 : p].mean(), lv[p - HAR_HISTORY]]
    return cast(np.ndarray, np.clip(np.array(stats) - level, -FEED_CLIP, FEED_CLIP))  # numpy: mean() is Any


def test_inputs_are_the_other_feeds_relative_volumes() -> None:
    attached, coverage = attach(frames(), MARKET_FEATURES)
    names = input_names(MARKET_FEATURES)
    assert attached[0][1].market is not None and attached[0][1].market.shape == (4321, len(names))
    by_hand = {key: {p: relative(f, p) for p in (HAR_HISTORY, 2000, 4320)} for key, f in frames()}
    for key, frame in attached:
        others = [k for k in KEYS if k != key]
        same_exchange = [k for k in others if k.split(":")[0] == key.split(":")[0]]
        for p in (HAR_HISTORY, 2000, 4320):  # 4320: the bar after the file
            row = dict(zip(names, frame.market[p], strict=True))  # type: ignore[index]
            market = np.mean([by_hand[k][p] for k in others], axis=0)
            assert [row[f"market_{s}"] for s in ("last", "mean_5", "mean_15", "mean_60", "day_ago")] == \
                pytest.approx(market.tolist(), abs=1e-9)
            exchange = np.mean([by_hand[k][p] for k in same_exchange], axis=0) if same_exchange else np.zeros(5)
            assert row["exchange_last"] == pytest.approx(exchange[0], abs=1e-9)
            share = by_hand[key][p][0] - exchange[0] if same_exchange else 0.0
            assert row["share_last"] == pytest.approx(share, abs=1e-9)
        # Before a day of bars no feed has statistics: the inputs are 0.
        assert not frame.market[:HAR_HISTORY].any()  # type: ignore[index]
        assert coverage[key].targets == 4321 - HAR_HISTORY
        assert coverage[key].with_others == coverage[key].targets and coverage[key].mean_others == 2.0


def test_a_future_bar_does_not_change_an_earlier_input() -> None:
    base = frames()
    before = attach(base, MARKET_FEATURES)[0][0][1].market
    changed_at = 3000
    key, frame = base[1]
    volume = frame.volume.copy()
    volume[changed_at] *= 50.0
    base[1] = (key, replace(frame, volume=volume))
    after = attach(base, MARKET_FEATURES)[0][0][1].market
    assert before is not None and after is not None
    # Bar 3000 closes before target 3001: inputs up to target 3000 are untouched, 3001 moves.
    np.testing.assert_array_equal(before[: changed_at + 1], after[: changed_at + 1])
    assert not np.allclose(before[changed_at + 1], after[changed_at + 1])


def test_one_file_falls_back_to_no_market_inputs() -> None:
    [(key, frame)], coverage = attach(frames(1), MARKET_FEATURES)
    assert frame.market is not None and not frame.market.any()
    assert coverage[key].with_others == 0
    model = ModelSettings(look_back=16, hidden=8, features=("log_volume", "time_of_day", *MARKET_FEATURES))
    trained = train_model([(key, frame)], model, TINY_TRAINING, progress=quiet)
    assert isinstance(trained.model, LstmModel)
    # Constant inputs are dropped (fed as 0), so the model is the one without them.
    assert set(input_names(MARKET_FEATURES)) <= set(trained.model.dropped_static)


def test_files_that_overlap_in_part_get_inputs_where_they_overlap() -> None:
    (k0, f0), (k1, f1) = frames(2)
    attached, coverage = attach([(k0, f0), (k1, f1[2000:])], ("market_volume",))
    assert coverage[k0].with_others == (4321 - 2000 - HAR_HISTORY)  # k1 has a day of bars from 3440
    assert coverage[k1].with_others == coverage[k1].targets == 4321 - 2000 - HAR_HISTORY
    market = attached[0][1].market
    assert market is not None and not market[: 2000 + HAR_HISTORY].any() and market[2000 + HAR_HISTORY:].any()


def matrix_of(series: list[tuple[Feed, BarFrame]], end: int) -> BarMatrix:
    matrix = BarMatrix(MINUTE, HAR_HISTORY)
    for feed, frame in series:
        values = np.stack([getattr(frame, c)[: end + 1] for c in COLUMNS])
        matrix.write(feed, frame.open_time_ms[: end + 1], values, continues=False)
    return matrix


def test_live_inputs_equal_the_offline_ones_and_leave_a_late_feed_out() -> None:
    offline = frames()
    feeds = [Feed(k.split(":")[0], k.split(":")[1], MINUTE) for k in KEYS]
    live_series = list(zip(feeds, [f for _, f in offline], strict=True))
    attached = dict(attach(offline, MARKET_FEATURES)[0])
    for end in (HAR_HISTORY - 1, 3000, 4319):  # bar `end` just closed: the target is end + 1
        matrix = matrix_of(live_series, end)
        open_ms = int(offline[0][1].open_time_ms[end])
        market = at_boundary(matrix, open_ms, MARKET_FEATURES)
        got = market.inputs(feeds, HAR_HISTORY).values[:, 0]
        want = np.stack([attached[k].market[end + 1] for k in KEYS])  # type: ignore[index]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    # A feed whose bar of the boundary is not held (far behind) is left out of the aggregate,
    # and gets zeros itself; the others get the aggregate of the feeds that are there.
    matrix = matrix_of(live_series[:2], 4319)
    matrix.write(feeds[2], offline[2][1].open_time_ms[:4000],
                 np.stack([getattr(offline[2][1], c)[:4000] for c in COLUMNS]), continues=False)
    market = at_boundary(matrix, int(offline[0][1].open_time_ms[4319]), MARKET_FEATURES)
    assert set(market.rows) == set(feeds[:2])
    two = dict(attach(offline[:2], MARKET_FEATURES)[0])
    got = market.inputs(feeds, HAR_HISTORY).values[:, 0]
    # attach gives every frame its market inputs (a cast: an ignored index error left assert_allclose no overload)
    np.testing.assert_allclose(got[:2], np.stack([cast(np.ndarray, two[k].market)[4320] for k in KEYS[:2]]), atol=1e-9)
    assert not got[2].any()


def test_the_model_reads_the_batch_inputs_and_zeros_without_them() -> None:
    attached = attach(frames(), MARKET_FEATURES)[0]
    model = ModelSettings(look_back=16, hidden=8, features=("log_volume", "time_of_day", *MARKET_FEATURES))
    trained = train_model([(k, f[:3500]) for k, f in attached], model, TINY_TRAINING, progress=quiet)
    lstm = trained.model
    assert isinstance(lstm, LstmModel) and not set(input_names(MARKET_FEATURES)) & set(lstm.dropped_static)
    key, frame = attached[0]
    positions = np.array([3600, 4000])
    with_market, _ = lstm.predict_log(Batch.stack([frame]), [key], positions)
    without, _ = lstm.predict_log(Batch.stack([replace(frame, market=None)]), [key], positions)
    assert not np.allclose(with_market, without)
    # A live batch (the bar after it) reads its inputs at the batch's end.
    live = Batch.stack([frame[: 4000]], HAR_HISTORY)
    assert live.market is not None and live.market.start == 0
    point, _ = lstm.predict_log(live, [key], np.array([HAR_HISTORY]))
    assert point[0, 0] == pytest.approx(with_market[0, 1], rel=1e-6)  # float32 network, other batch shapes


def write_csv(path: Path, frame: BarFrame) -> Path:
    rows = ["timestamp_ms,open,high,low,close,volume"]
    rows += [f"{t},{o!r},{h!r},{lo!r},{c!r},{v!r}" for t, o, h, lo, c, v in zip(
        frame.open_time_ms.tolist(), frame.open.tolist(), frame.high.tolist(), frame.low.tolist(),
        frame.close.tolist(), frame.volume.tolist(), strict=True)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_backtest_of_several_files_uses_them_and_says_so(tmp_path: Path) -> None:
    paths = [write_csv(tmp_path / f"binance-usdm_{k.split(':')[1].replace('/', '')}_1m.csv", f)
             for k, f in frames(2)]
    config = tmp_path / "config.yml"
    config.write_text("exchanges: [{id: binance, symbols: [NEAR/USDT]}]\n"
                      "model: {look_back: 16, hidden: 8, features: [log_volume, time_of_day, market_volume, "
                      "exchange_volume, market_share]}\n"
                      "training: {epochs: 1, batch_size: 512, patience: 0}\n")

    def backtest(*files: Path) -> tuple[dict[str, Any], str]:
        done = subprocess.run([sys.executable, "-m", "volcast.cli", "backtest", *map(str, files), "--json",
                               "--config", str(config)], cwd=tmp_path, capture_output=True, text=True,
                              timeout=280, check=False)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout), done.stderr

    both, stderr = backtest(*paths)
    assert set(both["files"]) == {"binance-usdm_NEARUSDT", "binance-usdm_ALGOUSDT"}
    assert {k: v["with_others"] for k, v in both["market"].items()} == \
        {k: 4321.0 - HAR_HISTORY for k in both["files"]}
    assert "market inputs for binance-usdm_NEARUSDT: from 1.0 other file(s)" in stderr
    assert both["models"]["lstm"]["rmse_log"] == pytest.approx(
        np.mean([f["lstm"]["rmse_log"] for f in both["files"].values()]))
    one, stderr = backtest(paths[0])
    assert "files" not in one and one["market"]["binance-usdm_NEARUSDT"]["with_others"] == 0
    assert "no other file at the same times: they are 0 and dropped" in stderr
    # volcast train over the same files: the artifact reads the inputs (not dropped as constant).
    out = tmp_path / "model"
    trained = subprocess.run([sys.executable, "-m", "volcast.cli", "train", "--bars", *map(str, paths), "--out",
                              str(out), "--config", str(config)], cwd=tmp_path, capture_output=True, text=True,
                             timeout=280, check=False)
    assert trained.returncode == 0, trained.stderr
    assert "market inputs for binance-usdm_ALGOUSDT: from 1.0 other file(s)" in trained.stderr
    meta = json.loads((out / "meta.json").read_text())
    names = input_names(("market_volume", "exchange_volume", "market_share"))
    assert set(names) <= set(meta["static"]) and not set(names) & set(meta["normalisation"]["dropped_static"])
