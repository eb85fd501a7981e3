"""One symbol's stream stops inside a connection it shares with others (the simulator's ``mute_*``
fault): the connection's trade flow goes on with the neighbours' trades and every ping is answered,
so neither the connection's flow guard nor the watchdog sees anything wrong. The busy symbol's own
silence must keep its bars from closing on pongs (streamer/feed_flow.py): they close by REST checks
instead, equal to the offline bars, and a stream that never comes back is dialled again.

The replay runs at real speed: the silence floor (1 s) is on our clock, so at 5x a second of trade
time would have closed five bars before the silence could be told from a gap between trades.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from stream_harness import same_bars, stream_with_faults

from volcast.keys import Feed

pytestmark = pytest.mark.slow

# 16 s of trades: BTC/USDT (34 trades a second, its longest gap 0.6 s) shares one connection with
# ETH/USDT (6 a second) and XRP/ETH (a few in all). Its stream stops 7 s in (past the 5 s its
# own flow needs to be judged), for 4 s or for good.
SECONDS = 16
BTC = Feed("binance", "BTC/USDT", 1000)


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLCAST_BINANCE_API_KEY", "simulator")


async def _stream_muted(tmp_path: Path, redis_config: dict[str, Any], faults: str) -> dict[str, int]:
    """Replay with ``faults``; assert every bar equals the offline one; return BTC/USDT's health."""
    # The watchdog is longer than the replay: a stream dialled again is the muted feed's doing.
    expected, streamed, health, _server = await stream_with_faults(
        tmp_path, redis_config, faults, seconds=SECONDS, speed=1, seed=3, watchdog="60s")
    for feed, bars in expected.items():
        same_bars(streamed[feed], bars, statuses=False)
        assert health[feed]["late"] == health[feed]["amended"] == 0, feed  # no bar closed short
        assert health[feed]["gap_bars"] == 0, feed
    return health[BTC]


async def test_a_stream_stopped_inside_a_shared_connection_holds_its_bars_until_rest_shows_them(
    tmp_path: Path, redis_config: dict[str, Any]
) -> None:
    busy = await _stream_muted(tmp_path, redis_config, "mute_after_s=7,mute_for_s=4")
    assert busy["stalls"] >= 1 and busy["rest_checks"] >= 1, busy


async def test_a_stream_that_never_comes_back_is_dialled_again_and_its_bars_close_by_rest(
    tmp_path: Path, redis_config: dict[str, Any]
) -> None:
    busy = await _stream_muted(tmp_path, redis_config, "mute_after_s=7,mute_for_s=600")
    assert busy["reconnects"] >= 1, busy  # REST had trades its stream did not send: dialled again
    # From then on every bar waits for a REST read (its trades advance the frontier: most bars then
    # close by trade proof).
    assert busy["rest_checks"] >= 3, busy
