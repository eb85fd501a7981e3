"""What a bar-closed event asks of the worker, given the bar each feed was last predicted from.

Events of a feed normally come in bar order, one per bar. Two things break that order:

- a **revision**: the streamer rewrote a closed bar after a late trade (streamer/bar_revisions.py)
  and sent its event again with ``rev`` (1, 2, ...). If it is the bar the feed was last predicted
  from (its next bar is still open), the forecast is made again from the revised bar and
  published on the retained topic as a revision (payload ``revision``); its held bars are read
  afresh, since the ones in memory are the old revision's.
- a **late event**: an event of a bar older than the one the feed was last predicted from: a
  revision that came after the feed's next bar was forecast, or an event that a Redis Cluster
  failover made the streamer send again after the feed's next bar was forecast (announce.py).
  Its forecast would be of a bar that has closed, and must not replace the newer retained one:
  it is ``superseded``, counted (``superseded_events``) and acknowledged, not predicted.

A repeat of an event already acted on (same bar, same or older revision) is ``REPEAT``, counted
as ``duplicate_events`` as before. What this process did not predict (after a restart, or a feed
that another worker of the group served) is ``NEW``: the worker's old-event path handles it.
"""

from __future__ import annotations

from enum import Enum

from forecaster.events import Event
from volcast.keys import Feed


class Triage(Enum):
    NEW = "new"
    REPEAT = "repeat"
    REVISION = "revision"
    SUPERSEDED = "superseded"


class LateEvents:
    """The revision of the bar each feed was last predicted from, and the counts of what came late."""

    __slots__ = ("_revs", "revised", "superseded")

    def __init__(self) -> None:
        self._revs: dict[Feed, int] = {}  # feed -> the newest revision seen of its last predicted bar
        self.superseded = 0  # events of a bar older than the feed's last prediction: not predicted
        self.revised = 0  # forecasts made again from a revised bar

    def triage(self, event: Event, feed: Feed, predicted: int | None) -> Triage:
        """What to do with ``event`` of ``feed``, whose last prediction was from bar ``predicted``."""
        open_ms = event.open_time_ms
        if predicted is None or open_ms > predicted:
            self._revs[feed] = event.rev
            return Triage.NEW
        if open_ms < predicted:
            return Triage.SUPERSEDED
        if event.rev > self._revs.get(feed, 0):
            self._revs[feed] = event.rev
            return Triage.REVISION
        return Triage.REPEAT

    def forget(self, feed: Feed) -> None:
        self._revs.pop(feed, None)

    def status(self) -> dict[str, str]:
        return {"superseded_events": str(self.superseded), "revised_forecasts": str(self.revised)}
