"""BarFrame construction, gap filling and the features / baselines on hand-computed series."""

from __future__ import annotations

import dataclasses
import gzip
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from forecast_helpers import NEAR, near

from forecaster.baselines import Ewma, Har, Naive, TimeOfDay
from forecaster.features import HAR_WINDOWS, Batch, minute_of_hour, signed_return, trailing_means, trailing_returns
from forecaster.frame import BarFrame, FrameError
from volcast.bar import Bar, BarStatus


def test_real_file_reads_as_contiguous_minutes() -> None:
    frame = near()
    assert len(frame) == 3 * 1440
    assert frame.interval_ms == 60_000
    assert frame.known == frozenset()
    assert frame.open_time_ms[0] == 1675209600000
    assert np.all(np.diff(frame.open_time_ms) == 60_000)
    assert frame.volume.sum() > 0


def test_sparse_file_fills_missing_bars_with_zero_volume_and_last_close(tmp_path: Path) -> None:
    path = tmp_path / "sparse.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("timestamp_ms,open,high,low,close,volume\n")
        fh.write("60000,10,11,9,10.5,2\n120000,10.5,10.5,10,10,1\n300000,12,12,12,12,4\n")
    frame = BarFrame.from_csv(path)
    assert frame.interval_ms == 60_000
    assert frame.open_time_ms.tolist() == [60000, 120000, 180000, 240000, 300000]
    assert frame.volume.tolist() == [2, 1, 0, 0, 4]
    assert frame.close.tolist() == [10.5, 10, 10, 10, 12]
    assert frame.high[2] == frame.low[2] == frame.open[2] == 10


def test_rich_csv_marks_trades_and_buy_volume_known(tmp_path: Path) -> None:
    path = tmp_path / "rich.csv"
    path.write_text(
        "timestamp_ms,open,high,low,close,volume,quote_volume,trades,buy_volume,sell_volume,vwap,"
        "first_trade_id,last_trade_id,status\n"
        "0,1,2,1,2,3,6,2,1,2,2,1,2,complete\n60000,2,2,2,2,5,10,4,5,0,2,3,6,backfilled\n"
    )
    frame = BarFrame.from_csv(path)
    assert frame.known == {"trades", "buy_volume"}
    assert frame.trades.tolist() == [2, 4]
    assert frame.buy_volume.tolist() == [1, 5]


def test_unsorted_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("timestamp_ms,open,high,low,close,volume\n120000,1,1,1,1,1\n60000,1,1,1,1,1\n")
    with pytest.raises(FrameError, match="increasing"):
        BarFrame.from_csv(path)


def test_from_bars_slicing_and_concat() -> None:
    def bar(t: int, v: str) -> Bar:
        d = Decimal
        return Bar(t, d(1), d(2), d("0.5"), d("1.5"), d(v), d(v) * 2, 3, d(v) / 2, d(v) / 2, d(2), 1, 3,
                   BarStatus.COMPLETE)

    frame = BarFrame.from_bars([bar(0, "1"), bar(60_000, "2.5"), bar(180_000, "4")])
    assert frame.known == {"trades", "buy_volume"}
    assert frame.volume.tolist() == [1, 2.5, 0, 4]
    joined = BarFrame.concat([frame[:2], frame[2:]])
    assert joined.volume.tolist() == frame.volume.tolist()
    assert len(frame.tail(2)) == 2 and frame.tail(2).end_ms == 240_000


def _frame(values: list[float]) -> BarFrame:
    """1-minute bars whose log1p volumes are ``values``."""
    n = len(values)
    return BarFrame(
        interval_ms=60_000, open_time_ms=np.arange(n, dtype=np.int64) * 60_000,
        open=np.ones(n), high=np.ones(n), low=np.ones(n), close=np.ones(n), volume=np.expm1(np.array(values)),
        trades=np.zeros(n), buy_volume=np.zeros(n),
    )


def _series(values: list[float]) -> Batch:
    return Batch.stack([_frame(values)])


def test_trailing_means_by_hand() -> None:
    lv = [float(i) for i in range(10)]
    out = trailing_means(_series(lv).log_volume, np.array([3, 10]))
    assert out[0, 0, 0] == 2.0  # the last bar before position 3
    assert out[0, 0, 1] == pytest.approx(1.0)  # mean of 0, 1, 2: fewer bars than the window
    assert out[0, 1, 1] == pytest.approx(np.mean(lv[5:10]))
    assert HAR_WINDOWS[0] == 5


def test_price_moves_by_hand() -> None:
    close = np.array([[100.0, 101.0, 100.0, 100.0, 102.0, 99.0]])
    batch = dataclasses.replace(_series([1.0] * 6), close=close)
    # Per bar: the signed close-to-close move as sign * log1p(basis points); the first bar has none.
    moves = np.diff(np.log(close[0]))
    np.testing.assert_allclose(signed_return(batch)[0], [0.0, *(np.sign(moves) * np.log1p(1e4 * np.abs(moves)))])
    # At target 6 (after the last bar): from the close 2 and 5 bars before the last one.
    out = trailing_returns(close, np.array([6, 2]), windows=(2, 5))
    for j, (p, w) in enumerate([(6, 2), (6, 5)]):
        r = np.log(close[0, p - 1] / close[0, p - 1 - w])
        assert out[0, 0, j] == pytest.approx(np.sign(r) * np.log1p(1e4 * abs(r)))
    # Fewer bars than the window: the move from the first bar.
    assert out[0, 1, 1] == pytest.approx(np.log1p(1e4 * np.log(101.0 / 100.0)))
    assert list(minute_of_hour(np.array([0, 59 * 60_000, 3_600_000 + 61_000]))) == [0, 59, 1]


def test_baselines_by_hand() -> None:
    batch = _series([1.0, 2.0, 3.0, 4.0])
    pos = np.array([4])
    assert Naive().predict_log(batch, ["x"], pos)[0][0, 0] == 4.0
    ewma = Ewma(alpha=0.5)
    expected = (0.5 * 4 + 0.25 * 3 + 0.125 * 2 + 0.0625 * 1) / (0.5 + 0.25 + 0.125 + 0.0625)
    assert ewma.predict_log(batch, ["x"], pos)[0][0, 0] == pytest.approx(expected)
    # Two days of 1-minute bars, then the same slot on day 3 is the mean of that slot on days 1-2.
    values = [0.0] * 2885
    values[5], values[1445] = 2.0, 4.0
    tod = TimeOfDay(60_000, days=7)
    assert tod.predict_log(_series(values), ["x"], np.array([2885]))[0][0, 0] == pytest.approx(3.0)


def _ewma_by_loop(lv: np.ndarray, p: int, alpha: float, span: int) -> float:
    """The definition: the weighted mean of the ``span`` bars before ``p`` (fewer at the start)."""
    k = np.arange(min(span, p))
    w = alpha * (1 - alpha) ** k
    return float((w * lv[p - 1 - k]).sum() / w.sum())


def test_ewma_past_its_span_and_its_fit_by_loop() -> None:
    """The windows weighted as one product give the definition's numbers, inside and past the
    span, and the fit picks the alpha whose squared error, summed by a loop, is least."""
    rng = np.random.default_rng(3)
    values = list(5.0 + np.cumsum(rng.normal(0, 0.3, 700)))
    lv = np.array(values)
    batch = _series(values)
    positions = np.array([1, 7, 239, 240, 241, 500, 699])
    for alpha in Ewma.ALPHAS:
        got = Ewma(alpha=alpha).predict_log(batch, ["x"], positions)[0][0]
        assert got == pytest.approx([_ewma_by_loop(lv, int(p), alpha, Ewma.SPAN) for p in positions], rel=1e-12)
    ewma = Ewma()
    ewma.fit([("x", _frame(values))])
    errors = {alpha: sum((_ewma_by_loop(lv, p, alpha, Ewma.SPAN) - lv[p]) ** 2 for p in range(Ewma.SPAN, 700))
              for alpha in Ewma.ALPHAS}
    assert ewma.alpha == min(errors, key=errors.__getitem__)


def test_har_recovers_a_known_linear_rule() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    lv = np.empty(n)
    lv[0] = 3.0
    for t in range(1, n):  # an AR(1) in log volume: HAR's 'last' coefficient must find it
        lv[t] = 1.0 + 0.6 * lv[t - 1] + rng.normal(0, 0.1)
    vol = np.expm1(lv)
    frame = BarFrame(
        interval_ms=60_000, open_time_ms=np.arange(n, dtype=np.int64) * 60_000, open=np.ones(n),
        high=np.ones(n), low=np.ones(n), close=np.ones(n), volume=vol, trades=np.zeros(n),
        buy_volume=np.zeros(n),
    )
    har = Har()
    har.fit([("x", frame)])
    assert har.coef[1] == pytest.approx(0.6, abs=0.06)
    pred = har.predict_log(Batch.stack([frame]), ["x"], np.array([n]))[0][0, 0]
    assert pred == pytest.approx(1.0 + 0.6 * lv[-1], abs=0.05)


def test_near_file_is_small() -> None:
    assert NEAR.stat().st_size < 200_000


def test_har_fitted_design_leaves_each_target_out_of_its_profile() -> None:
    frame = near()  # three whole days of 1-minute bars
    har = Har()
    har.fit([("x", frame)])
    lv = np.log1p(frame.volume)
    dev = lv - lv.mean()
    p = 2 * 1440 + 100  # slot 100 of day 3; the same slot is at rows 100 and 1540
    fitted = har.fitted_design("x", frame, np.array([p]))[0, -1]
    assert fitted == pytest.approx((dev[100] + dev[1540]) / 2)
    # On bars HAR did not fit on (a live forecast), the profile is the mean over all three days.
    unseen = har.design(Batch.stack([frame]), ["x"], np.array([p]))[0, 0, -1]
    assert unseen == pytest.approx((dev[100] + dev[1540] + dev[p]) / 3)
