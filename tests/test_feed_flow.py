"""A feed's own trade flow (streamer/feed_flow.py), on a clock the test moves: when it is judged,
when a silence is a stall, and when REST shows a trade the stream owed."""

from __future__ import annotations

import math
from typing import cast

from streamer.feed_flow import FeedFlow


def _trades(flow: FeedFlow, start: float, seconds: float, per_s: float, first_ms: int = 1_000) -> float:
    """Feed ``per_s`` trades a second for ``seconds`` from ``start``, looking after each; returns the last time."""
    now = start
    for i in range(int(seconds * per_s)):
        now = start + i / per_s
        flow.delivered(first_ms + int((now - start) * 1000))
        assert not flow.look(now, now)
    return now


def test_a_busy_symbol_silent_past_twenty_gaps_and_a_second_has_one_stall_from_its_newest_trade() -> None:
    flow = FeedFlow()
    last = _trades(flow, 0.0, 10.0, 20.0)  # 20 a second: mean gap 0.05 s, limit max(1 s, 20 x 0.05)
    assert flow.warm and math.isclose(flow.limit_s(), 1.0, rel_tol=0.05)
    assert not flow.look(last + 0.9, last)
    assert flow.look(last + 1.1, last) and flow.look(last + 5.0, last)
    assert flow.episodes == 1  # one silence, one episode however often it is looked at
    assert flow.first_since(0) == flow.newest_ms
    # Trades again, then a second silence: a second episode.
    last = _trades(flow, last + 5.0, 2.0, 20.0, first_ms=flow.newest_ms + 5_000)
    assert flow.look(last + 1.5, last) and flow.episodes == 2


def test_a_symbol_is_not_judged_before_five_seconds_nor_when_its_mean_gap_is_long() -> None:
    flow = FeedFlow()
    last = _trades(flow, 0.0, 4.0, 50.0)  # 200 trades, but in 4 s: a subscription's burst
    assert not flow.warm and not flow.look(last + 30.0, last) and flow.episodes == 0
    quiet = FeedFlow()
    last = _trades(quiet, 0.0, 60.0, 5.0)  # 5 a second: mean gap 0.2 s, a middling symbol
    assert not quiet.warm and not quiet.look(last + 30.0, last) and quiet.episodes == 0


def test_a_burst_does_not_make_a_middling_symbol_busy() -> None:
    flow = FeedFlow()
    last = _trades(flow, 0.0, 20.0, 2.0)  # 40 trades in 20 s
    last = _trades(flow, last + 0.5, 0.5, 200.0, first_ms=flow.newest_ms + 500)  # then 100 in half a second
    # 64 frames of the burst would say 5 ms; the 30 s window says ~0.14 s: not busy.
    assert not flow.warm and not flow.look(last + 5.0, last)


def test_a_long_silence_keeps_the_rate_it_ended() -> None:
    flow = FeedFlow()
    last = _trades(flow, 0.0, 10.0, 20.0)
    # A stream stopped for good is judged by the rate it had, however long ago that was.
    assert flow.look(last + 600.0, last) and flow.warm


def test_rest_trades_show_a_stopped_stream_only_past_what_the_connection_owed() -> None:
    flow = FeedFlow()
    flow.newest_ms = 10_000
    flow.watch_from(12_000)  # subscribed again at 12 s
    flow.note_rest_trade(11_000)  # sent while no connection owed it: the catch-up's, not a loss
    assert flow.unsent_ms is None  # mypy holds it None across the calls below: hence the casts
    flow.note_rest_trade(12_500)
    flow.note_rest_trade(13_000)
    assert cast(object, flow.unsent_ms) == 12_500
    assert not flow.unsent_by(12_400)  # it may still be on its way
    assert flow.unsent_by(12_600)
    flow.newest_ms = 12_700  # the stream sent it after all
    assert not flow.unsent_by(20_000)
    flow.note_rest_trade(14_000)  # a newer one missing replaces the one the stream has sent since
    assert cast(object, flow.unsent_ms) == 14_000 and flow.unsent_by(14_000)
