"""The events of one read, sorted into boundaries: a repeat of a bar already predicted and an
event superseded by a later one are acknowledged without a forecast, an event that is not a
bar-closed event of a configured feed is dead-lettered, a revised bar is read afresh.

A boundary that fails for any reason but an outage is retried in halves down to the event that
fails, which is dead-lettered after ``dead_letter_after`` attempts: one bad event never holds back
the good ones read with it. Feeds whose event failed recently (suspects) are handled apart.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from forecaster.bar_reader import BarHistories
from forecaster.boundary_pass import BoundaryPass
from forecaster.dead_letters import DeadLetters
from forecaster.events import Event
from forecaster.handoffs import Handoffs
from forecaster.late_events import LateEvents, Triage
from forecaster.worker_counts import WorkerCounts
from volcast.keys import Feed, RedisKeys
from volcast.redis_problems import TRANSIENT, key_problem, wrong_type

log = logging.getLogger(__name__)


class EventTriage:
    """``process``: a read's events, each boundary through ``BoundaryPass.boundary``."""

    def __init__(self, keys: RedisKeys, bars: BarHistories, boundaries: BoundaryPass, dead: DeadLetters,
                 late: LateEvents, handoffs: Handoffs, counts: WorkerCounts, dead_after: int) -> None:
        self.keys = keys
        self.bars = bars
        self.boundaries = boundaries
        self.dead = dead
        self.late = late
        self.handoffs = handoffs
        self.counts = counts
        self._dead_after = dead_after
        # Feeds whose event failed recently: handled apart, so one bad feed does not send every
        # boundary through the split-and-retry of a failure.
        self._suspects: set[Feed] = set()

    async def process(self, events: Sequence[Event]) -> None:
        if not events:
            return
        try:
            await self._process(events)
        finally:
            self.handoffs.batch_ended()

    async def _process(self, events: Sequence[Event]) -> None:
        by_time: dict[int, list[Event]] = {}
        invalid: list[tuple[Event, str, int]] = []
        repeated: list[tuple[int, bytes]] = []
        superseded: list[tuple[int, bytes]] = []
        predicted = self.boundaries.predicted
        late = self.late
        for event in events:
            feed = event.feed
            if feed is None:
                invalid.append((event, event.problem or "not a bar-closed event", 1))
                continue
            kind = late.triage(event, feed, predicted.get(feed))
            if kind is Triage.REPEAT:
                repeated.append((event.shard, event.entry_id))  # the same bar's event again: one forecast per bar
            elif kind is Triage.SUPERSEDED:
                superseded.append((event.shard, event.entry_id))
                log.info("%s: event of bar %d (rev %d) came after bar %d was predicted from: superseded, not "
                         "predicted", feed, event.open_time_ms, event.rev, predicted.get(feed))
            else:
                if kind is Triage.REVISION:
                    self.bars.forget(feed)  # the held bars are the old revision's: read them afresh
                    self.boundaries.revise(feed, event.open_time_ms, event.rev)
                by_time.setdefault(event.open_time_ms, []).append(event)
        if repeated:
            self.counts.duplicate_events += len(repeated)
            self.handoffs.acks.put_nowait(({}, repeated, None))
        if superseded:
            late.superseded += len(superseded)
            self.handoffs.acks.put_nowait(({}, superseded, None))
        if invalid:
            self.counts.invalid_events += len(invalid)
            try:
                await self.dead.bury(invalid)
            except TRANSIENT:
                # They and the rest are in this consumer's pending list, which is not read again:
                # keep them for after the retry instead of leaving them there.
                later = [e for t in sorted(by_time) for e in by_time[t]]
                self.handoffs.stash[:0] = [e for e, _, _ in invalid] + later
                raise
        times = sorted(by_time)
        try:
            for n, open_ms in enumerate(times):
                try:
                    await self._handle(open_ms, by_time[open_ms])
                except TRANSIENT:
                    # Raised by the boundary's first read, before anything was published: as above.
                    self.handoffs.stash[:0] = [e for t in times[n:] for e in by_time[t]]
                    raise
        finally:
            self.boundaries.read_done()

    async def _handle(self, open_ms: int, events: list[Event]) -> None:
        """One boundary's events; the suspects (feeds that failed recently) each on their own."""
        suspects = self._suspects
        if not suspects:
            await self._attempt(open_ms, events)
            return
        rest = [e for e in events if e.feed not in suspects]
        if rest:
            await self._attempt(open_ms, rest)
        for event in events:
            if event.feed in suspects:
                await self._attempt(open_ms, [event])

    async def _attempt(self, open_ms: int, events: list[Event], failures: int = 0) -> None:
        """``boundary``, and when it fails for any reason but an outage: the events again in two
        halves, down to the single event that fails, which is tried ``dead_letter_after`` times
        and then dead-lettered. One bad event never holds back the good ones read with it, and
        a failure that is not an outage is never retried as if Redis were down."""
        try:
            await self.boundaries.boundary(open_ms, events)
        except TRANSIENT:
            raise
        except Exception as exc:
            self.counts.handling_errors += 1
            for event in events:  # a failed read may have left their held bars half written
                if event.feed is not None:
                    self.bars.forget(event.feed)
            if len(events) > 1:
                log.error("bar %d: handling %d events failed (%s); retrying them apart", open_ms, len(events),
                          self._reason(exc, None))
                half = len(events) // 2
                await self._attempt(open_ms, events[:half])
                await self._attempt(open_ms, events[half:])
                return
            event = events[0]
            if event.feed is not None:
                self._suspects.add(event.feed)
            failures += 1
            if failures < self._dead_after:
                await self._attempt(open_ms, events, failures)
            else:
                await self.dead.bury([(event, self._reason(exc, event.feed), failures)])
            return
        if len(events) == 1 and events[0].feed in self._suspects:
            self._suspects.discard(events[0].feed)

    def _reason(self, exc: BaseException, feed: Feed | None) -> str:
        if feed is not None and wrong_type(exc):
            return str(key_problem(self.keys.bars(feed), exc, expected="stream of bars"))
        return f"{type(exc).__name__}: {exc}"
