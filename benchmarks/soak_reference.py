"""The bars the soak's streamed bars must equal: what the simulator sent, aggregated offline.

What a looping ``volcast replay`` sends for one symbol (streamer/simulator/timeline.py,
published.py): its tape moved by a whole number of days (``shift``, chosen from the wall clock
when the replay started, so that the tape's first trade falls in the day before), then the same
tape again and again, each pass ``period`` later (whole days past the last trade of all tapes)
with ids moved by the tape's id span. ``PublishedTrades.trade(i)`` is exactly the i-th trade of
that endless sequence, so the reference feeds those trades, in order, to the aggregator
``volcast bars`` uses (no grace: every trade is known) and keeps the bars it closes.

The shift is not guessed from our own clock (a replay started near the day's turn of a tape
would be a day off): it is read back from the running replay, whose REST API returns the
tape's first trade as it was sent (``historicalTrades?fromId=<first id>``).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from decimal import Decimal

from streamer.aggregator import BarAggregator
from streamer.simulator.published import PublishedTrades
from streamer.simulator.tape import Tape
from streamer.simulator.timeline import Timeline
from volcast.bar import Bar, BarStatus, Trade


def sent_first_trade_ms(rest_url: str, tape: Tape, attempts: int = 50) -> int | None:
    """The timestamp the replay gave the tape's first trade, None while it is not published yet
    (a tape can start hours of replay time after another); retried through injected REST errors."""
    url = f"{rest_url}/historicalTrades?symbol={tape.market_id}&fromId={tape.trades[0].trade_id}&limit=1"
    last_error = "no answer"
    for _ in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                rows = json.loads(response.read())
            return int(rows[0]["time"]) if rows else None
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError) as exc:
            last_error = repr(exc)
        time.sleep(0.1)
    raise RuntimeError(f"the replay at {rest_url} did not return {tape.symbol}'s first trade: {last_error}")


def replay_timeline(rest_url: str, tapes: Iterable[Tape]) -> Timeline | None:
    """The running replay's timeline (its per-tape shifts, hence its loop period); None until
    every tape's first trade is published."""
    tapes = tuple(tapes)
    shifts = []
    for tape in tapes:
        sent = sent_first_trade_ms(rest_url, tape)
        if sent is None:
            return None
        shifts.append(sent - tape.trades[0].timestamp_ms)
    return Timeline.build(tapes, shifts)


@dataclass(frozen=True, slots=True)
class Mismatch:
    open_time_ms: int
    status: str
    fields: dict[str, tuple[str, str]]
    """field -> (in Redis, reference); ``{"bar": ...}`` when the reference has no such bar."""


@dataclass(slots=True)
class BarCheck:
    """Running totals of one feed's check."""

    complete: int = 0
    backfilled: int = 0
    gap: int = 0
    inexact_complete: int = 0
    inexact_backfilled: int = 0
    missing: int = 0
    """Bars absent between two bars in Redis (bars must be contiguous)."""
    examples: list[Mismatch] = field(default_factory=list)


class ReferenceBars:
    """One feed's reference, built forward as far as the streamed bars reach; bars already
    compared are dropped so that a long soak holds only a window of them."""

    EXAMPLES_KEPT = 5

    def __init__(self, tape: Tape, timeline: Timeline, tape_index: int, interval_ms: int) -> None:
        self._sent = PublishedTrades(tape, timeline.shifts_ms[tape_index], timeline.period_ms)
        self.interval_ms = interval_ms
        self._bars: dict[int, Bar] = {}
        self._aggregator = BarAggregator(interval_ms, 0, self._keep)
        self._next = 0
        self._until_ms = -1
        self._last_open_ms: int | None = None
        self.check = BarCheck()

    def _keep(self, bar: Bar) -> None:
        self._bars[bar.open_time_ms] = bar

    def _extend(self, until_ms: int) -> None:
        """Close every reference bar that ends at or before ``until_ms``."""
        if until_ms <= self._until_ms:
            return
        while True:
            sent = self._sent.trade(self._next)
            if sent.timestamp_ms >= until_ms:
                break
            self._aggregator.add(Trade(sent.timestamp_ms, sent.trade_id, Decimal(sent.price), Decimal(sent.amount),
                                       "sell" if sent.buyer_maker else "buy"))
            self._next += 1
        self._aggregator.advance(until_ms)
        self._until_ms = until_ms

    def compare(self, bars: list[Bar]) -> None:
        """Check streamed bars (oldest first, each read once) against the reference."""
        if not bars:
            return
        self._extend(max(b.open_time_ms for b in bars) + self.interval_ms)
        check = self.check
        for bar in bars:
            if self._last_open_ms is not None and bar.open_time_ms > self._last_open_ms + self.interval_ms:
                check.missing += (bar.open_time_ms - self._last_open_ms) // self.interval_ms - 1
            self._last_open_ms = bar.open_time_ms
            if bar.status is BarStatus.GAP:
                check.gap += 1  # honestly flagged: trades are known to be missing
                continue
            if bar.status is BarStatus.COMPLETE:
                check.complete += 1
            else:
                check.backfilled += 1
            want = self._bars.pop(bar.open_time_ms, None)
            diff = _diff(bar, want)
            if diff:
                if bar.status is BarStatus.COMPLETE:
                    check.inexact_complete += 1
                else:
                    check.inexact_backfilled += 1
                if len(check.examples) < self.EXAMPLES_KEPT:
                    check.examples.append(Mismatch(bar.open_time_ms, bar.status.value, diff))
        # Streamed bars are read once, in order: older reference bars are never needed again.
        newest = bars[-1].open_time_ms
        for open_ms in [k for k in self._bars if k <= newest]:
            del self._bars[open_ms]


def _diff(got: Bar, want: Bar | None) -> dict[str, tuple[str, str]]:
    if want is None:
        return {"bar": ("present", "no reference bar: no trade sent before it")}
    have = replace(got, status=want.status).to_fields()
    expected = want.to_fields()
    # A history bar comes from the exchange's candle, which names no trade ids; every value it
    # does carry must still be exact. (Under load the streamer starts later, so more of the
    # replay's first bars are served as history.)
    unnamed = _CANDLE_HAS_NO if got.status is BarStatus.HISTORY else ()
    return {name: (have[name], expected[name]) for name in expected
            if name not in unnamed and have[name] != expected[name]}


_CANDLE_HAS_NO = ("first_trade_id", "last_trade_id")
