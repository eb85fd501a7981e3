"""Revisions of closed bars: a bar that a late trade amended, rewritten in its feed's stream.

A feed's bars are a stream whose entry ids are the bars' open times: ``<open ms>-<rev>``, ``rev``
0 as first written. A revision (streamer/aggregator.py: a late trade of one of the last closed
bars) replaces the entry by ``<open ms>-<rev>`` and adds the field ``rev``, so every reader still
finds one entry per open time, at its place in time order, and one that asks knows which
revision it read. XADD takes only ids above the stream's last one, and the amended bar may have
newer bars after it (a quiet feed closes several at once), so one script does it all, atomically:
the old entry and the (few) entries after it are deleted, the stream's last id is set back to
``<open ms>-0`` (XSETID: the newest entry left is older), and the revision and then the later
entries, unchanged, are added again. A reader sees the stream before or after, never between.

The script is idempotent: a revision already there (a retried batch whose reply was lost), or a
later one, is not written again (0). A bar that is not in the stream (trimmed by retention, or
never written: its feed failed) cannot be amended (-1, counted by the store). On one Redis node
the script also sends the bar's event again, with ``rev`` (both or neither); on a cluster the
event follows once Redis confirmed the revision (streamer/announce.py), and never moves the
feed's ``announced`` mark.
"""

from __future__ import annotations

from volcast.redis_text import as_text

_REWRITE = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'stream' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' holds a ' .. kind .. ', not a stream')
end
local open, rev = ARGV[1], tonumber(ARGV[2])
local found = redis.call('XRANGE', KEYS[1], open .. '-0', open .. '-18446744073709551615', 'COUNT', 1)
if #found == 0 then return -1 end
local old = found[1][1]
if tonumber(string.match(old, '-(%d+)$')) >= rev then return 0 end
local after = redis.call('XRANGE', KEYS[1], '(' .. old, '+')
redis.call('XDEL', KEYS[1], old)
for _, entry in ipairs(after) do redis.call('XDEL', KEYS[1], entry[1]) end
redis.call('XSETID', KEYS[1], open .. '-0')
redis.call('XADD', KEYS[1], open .. '-' .. rev, unpack(bar))
for _, entry in ipairs(after) do redis.call('XADD', KEYS[1], entry[1], unpack(entry[2])) end
"""

AMEND_BAR = """
local n = tonumber(ARGV[4])
local bar, event = {}, {}
for i = 5, 4 + 2 * n do bar[#bar + 1] = ARGV[i] end
for i = 5 + 2 * n, #ARGV do event[#event + 1] = ARGV[i] end
local events_kind = redis.call('TYPE', KEYS[2])['ok']
if events_kind ~= 'stream' and events_kind ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[2] .. ' holds a ' .. events_kind .. ', not a stream')
end
""" + _REWRITE + """
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(event))
return 1
"""
"""One bar's revision and its event. KEYS: the feed's bar stream, the events stream. ARGV: open
time, rev, events MAXLEN, n, then n field/value pairs of the bar, then the event's pairs. Returns
1 (written), 0 (this revision or a later one is there), -1 (the bar is not in the stream)."""

AMEND_BAR_ALONE = """
local bar = {}
for i = 3, #ARGV do bar[#bar + 1] = ARGV[i] end
""" + _REWRITE + """
return 1
"""
"""The revision alone (a cluster: its event is in another slot). KEYS: the feed's bar stream.
ARGV: open time, rev, then the bar's field/value pairs. Returns as ``AMEND_BAR``."""


def revision_id(open_time_ms: int, rev: int) -> str:
    """The stream entry id of a bar's revision (``rev`` 0: as first written)."""
    return f"{open_time_ms}-{rev}"


def entry_rev(entry_id: bytes | str) -> int:
    """The revision a bar stream entry holds, from its id."""
    return int(as_text(entry_id).rpartition("-")[2])
