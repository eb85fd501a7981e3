"""The demo's live table (volcast/demo_view.py): numbers in even formats, columns aligned."""

from __future__ import annotations

import re

from forecaster.payload import Prediction
from volcast.demo_view import HEADER, format_row
from volcast.keys import Feed

FEED = Feed("binance", "XRP/ETH", 60_000)
T0 = 1_570_752_000_000


def prediction(volume: float, quantiles: dict[float, float], baseline: bool = False) -> Prediction:
    return Prediction(feed=FEED, open_time_ms=T0, last_bar_ms=T0 - 60_000, last_volume=95.0, volume=volume,
                      quantiles=quantiles, model_name="ewma" if baseline else "lstm",
                      model_version="baseline" if baseline else "3", baseline=baseline, created_ms=T0)


def test_every_number_has_two_decimals_and_the_columns_line_up() -> None:
    rows = [
        format_row(prediction(148.2, {}, baseline=True), None, lambda ms: "2019-10-11 00:00"),
        format_row(prediction(1482.0, {0.1: 95.0, 0.5: 1400.0, 0.9: 12345.678}), 95.0, lambda ms: "2019-10-11 00:00"),
        format_row(prediction(0.125, {0.1: 0.01, 0.5: 0.1, 0.9: 2.5}), 123456.789, lambda ms: "2019-10-11 00:00"),
    ]
    start, end = HEADER.index("bar (UTC)") + 20, HEADER.index("actual") + len("actual")
    for row in rows:
        numbers = re.findall(r"\d[\d.e+]*", row[start:end])  # predicted, the band, actual
        assert numbers and all(re.fullmatch(r"\d+\.\d{2}", n) for n in numbers), row
    # Each column ends where its header ends.
    for column in ("predicted", "80% band", "actual"):
        end = HEADER.index(column) + len(column)
        for row in rows:
            assert row[end - 1] != " " and (len(row) == end or row[end] == " "), (column, row)
