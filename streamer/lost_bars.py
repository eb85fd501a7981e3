"""Bars Redis lost behind a running streamer's back (a failover), put back before the feed's next bar.

Redis replicates asynchronously: a master that acknowledged bars and died before its replica had
them leaves a promoted replica without them. Replication is in order, so what a feed's bar stream
loses is its newest bars (a suffix). Once a newer bar is written the lost ones can no longer be put
back (a stream's ids only grow), and redis-py's cluster client often re-sends a write to the new
master by itself, so the writer may see no error at all. Hence the check is in the bar script
(``CHECK_NEWEST``, the first thing it does after the key's type): the store passes the open time of
the newest bar Redis confirmed to it for that feed (the bar before this one in the same pipeline,
or -1: nothing known, no check); if the stream's newest entry is older, the script writes nothing
and answers ``["lost", <newest open time, -1 if the stream is empty>]``. The store then writes
the bars it keeps in memory (``RecentBars``, the last ``WINDOW_BARS`` of each feed, each in its
newest revision) after that point, each with its event (rev 0: it is announced as a bar, as
announce.py's recovery does), then the bar that was refused and the ones after it. The script is
idempotent by entry id, like every bar write. Bars older than the window cannot be put back: they
are counted and logged as an error (a hole in the stream that a restart does not fill either).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from volcast.bar import Bar
from volcast.keys import Feed

WINDOW_BARS = 128
"""Closed bars kept per feed to put back (about 0.1 MB per feed: 128 s of 1 s bars, 2 h of 1 m bars)."""

# Expects the bar script's ARGV[4] to be that open time (-1: no check); KEYS[1] the bar stream.
CHECK_NEWEST = """
local expected = tonumber(ARGV[4])
if expected >= 0 then
  local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  local newest = -1
  if #top > 0 then newest = tonumber(string.match(top[1][1], '^%d+')) end
  if newest < expected then return {'lost', newest} end
end
"""


def lost_newest(reply: Any) -> int | None:
    """The stream's newest open time if a bar script answered that bars were lost, else None."""
    if type(reply) is list and len(reply) == 2 and reply[0] in (b"lost", "lost"):
        return int(reply[1])
    return None


class RecentBars:
    """The last ``WINDOW_BARS`` bars Redis confirmed for each feed, each in its newest revision
    (noted when confirmed: bars waiting in a batch do not push out the ones to put back)."""

    def __init__(self, size: int = WINDOW_BARS) -> None:
        self.size = size
        self._bars: dict[Feed, deque[tuple[Bar, int]]] = {}

    def note(self, feed: Feed, bar: Bar, rev: int) -> None:
        """Keep ``bar`` (revision ``rev``); it replaces an older revision of the same bar."""
        bars = self._bars.get(feed)
        if bars is None:
            bars = self._bars[feed] = deque(maxlen=self.size)
        if not bars or bars[-1][0].open_time_ms < bar.open_time_ms:
            bars.append((bar, rev))  # the usual case: the feed's next bar
            return
        # A revision is of one of the last closed bars, and a retried batch confirms its bars
        # again ("already there"): look from the end.
        for i in range(len(bars) - 1, -1, -1):
            held, held_rev = bars[i]
            if held.open_time_ms == bar.open_time_ms:
                if rev >= held_rev:
                    bars[i] = (bar, rev)
                return
            if held.open_time_ms < bar.open_time_ms:
                return  # older than what is kept after it and not kept itself: nothing to replace

    def after(self, feed: Feed, newest_ms: int) -> list[tuple[Bar, int]]:
        """The kept bars of ``feed`` newer than ``newest_ms``, oldest first."""
        return [(bar, rev) for bar, rev in self._bars.get(feed, ()) if bar.open_time_ms > newest_ms]

    def forget(self, feed: Feed) -> None:
        self._bars.pop(feed, None)
