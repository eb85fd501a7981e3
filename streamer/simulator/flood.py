"""Synthetic trades for the flood mode: many trades, consecutive ids, realistic strings.

Timestamps advance one millisecond per trade from the start of the current UTC minute, so a
flood of 100,000 trades spans 100 s: several 1-minute bars, and many 1-second ones.
"""

from __future__ import annotations

import random
import time

from streamer.simulator.tape import Tape, TapeTrade


def synthetic_tape(
    symbol: str, count: int, *, start_ms: int | None = None, first_id: int = 1_000_000, seed: int = 0
) -> Tape:
    if count < 1:
        raise ValueError(f"a flood needs at least one trade, got {count}")
    if start_ms is None:
        start_ms = int(time.time() * 1000) // 60_000 * 60_000
    rng = random.Random(f"{seed}:{symbol}")
    price_cents = 6_000_000
    trades = []
    draw = rng.random
    for i in range(count):
        price_cents = max(1, price_cents + int(draw() * 7) - 3)
        amount = 1 + int(draw() * 500_000)
        trades.append(
            TapeTrade(
                start_ms + i,
                first_id + i,
                f"{price_cents // 100}.{price_cents % 100:02d}",
                f"{amount // 100_000}.{amount % 100_000:05d}",
                draw() < 0.5,
            )
        )
    return Tape(symbol, tuple(trades))
