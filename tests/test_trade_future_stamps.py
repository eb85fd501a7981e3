"""A trade stamped far past the exchange's clock is refused, but only after the clock has been read
again: a replay faster than real time runs ahead of any old reading and must not lose trades.
(One feed, ccxt's real client against the simulator's REST clock.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from stream_harness import TRADE_FILES, stream_settings, unique_prefix

from streamer.exchange_link import ExchangeLink
from streamer.feed import FeedRunner
from streamer.simulator.server import ReplayServer
from streamer.simulator.tape import load_tape
from streamer.source import create_exchange
from streamer.trade_validation import MAX_AHEAD_MS
from volcast.bar import Bar
from volcast.keys import Feed

YEAR_2096_MS = 4_000_000_000_000


def _raw(trade_id: int, timestamp_ms: int) -> dict[str, Any]:
    return {
        "id": str(trade_id), "timestamp": timestamp_ms, "side": "buy", "price": 10.0, "amount": 1.0,
        "info": {"t": trade_id, "p": "10.00", "q": "1.000", "T": timestamp_ms},
    }


@pytest.mark.parametrize("stale_by_ms", [0, 2 * MAX_AHEAD_MS])
async def test_a_trade_from_the_future_is_refused_once_the_clock_is_read(stale_by_ms: int, tmp_path: Path) -> None:
    tape = load_tape(TRADE_FILES[0])
    async with ReplayServer([tape], speed=1) as server:
        settings = stream_settings(server, [tape.symbol], unique_prefix())
        link = ExchangeLink(create_exchange(settings.exchanges[0], env={}), settings.exchanges[0])
        try:
            bars: list[Bar] = []
            runner = FeedRunner(Feed("binance", tape.symbol, 1000), link, settings, lambda f, b: bars.append(b), None)
            # The feed's last reading of the exchange's clock, made `stale_by_ms` of exchange time
            # ago (a replay running ahead of real time).
            runner._check_offset_ms = await link.clock_offset_ms() - stale_by_ms
            now = server.clock_ms()
            runner._on_raw(_raw(100, now - 5))
            runner._on_raw(_raw(101, YEAR_2096_MS))
            runner._on_raw(_raw(102, now))
            # Nothing is judged by the old reading: a trade past it waits, and those after it too.
            assert [t.trade_id for t in runner._held] == ([101, 102] if not stale_by_ms else [100, 101, 102])
            await runner._release_held()
        finally:
            await link.exchange.close()
    assert not runner._held
    health = runner.health
    assert (health.malformed, health.malformed_timestamp) == (1, 1)
    assert runner.aggregator.trades == 2  # 100 and 102, whatever the reading's age
    snapshot = runner.aggregator.open_bars()  # bars up to 2096 would never end
    assert len(snapshot) <= 2 and all(b.open_time_ms <= now for b in snapshot)
    assert health.last_trade_ms == now
