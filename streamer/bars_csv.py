"""Bars written as CSV: ``timestamp_ms,open,high,low,close,volume`` (the shared data's bar format,
bar open time in ms), then the fields only volcast computes."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import IO

from volcast.bar import BAR_FIELDS, Bar

# The first six columns match ../shared/data/bars so tools that read those files read ours.
_SHARED_COLUMNS = ("timestamp_ms", "open", "high", "low", "close", "volume")
BAR_CSV_COLUMNS: tuple[str, ...] = (
    *_SHARED_COLUMNS,
    *(name for name in BAR_FIELDS if name != "open_time_ms" and name not in _SHARED_COLUMNS),
)


def write_bars(bars: Iterable[Bar], out: IO[str]) -> int:
    """Write a header and one row per bar; returns the number of bars written."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(BAR_CSV_COLUMNS)
    count = 0
    for bar in bars:
        fields = bar.to_fields()
        fields["timestamp_ms"] = fields.pop("open_time_ms")
        writer.writerow([fields[name] for name in BAR_CSV_COLUMNS])
        count += 1
    return count
