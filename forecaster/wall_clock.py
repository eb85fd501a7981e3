"""The wall clock in milliseconds: when a prediction was made, a status written, a model refused."""

from __future__ import annotations

import time


def now_ms() -> int:
    return time.time_ns() // 1_000_000
