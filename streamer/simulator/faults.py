"""Faults the simulator can inject, parsed from ``key=value,key=value``.

Every fault is off by default. What each one does (per websocket connection unless said):

- ``drop_every_trades=N``: close the TCP connection, without a websocket close frame, right
  after it carried its N-th trade frame.
- ``drop_every_s=S``: the same, S seconds after the connection opened.
- ``silent_after_s=A,silent_for_s=D``: server-wide, once: from A s after the replay started,
  for D s, send no trade on any connection (pings are still answered). The trades of that
  period are still published to REST, so a client can backfill them.
- ``stall_after_s=A``: from A s after the replay started, every connection then open stops for
  good without closing (a half-open connection, or a server that stopped reading): it sends no
  frame and answers no ping. Connections opened later work. Its trades are published to REST.
- ``late_after_s=A,late_for_s=W,late_ms=D``: server-wide, once: the first tape's trades
  published from A s after the replay started, for W s, reach every connection D ms after
  their publication (in order; its trades published after the window queue behind them), while
  the other tapes' trades, pings and REST stay on time. One symbol's stream lagging behind the
  rest of the exchange: its bars can close on a pong (the others' trades show the exchange's
  flow past the bar's end) before their last trades arrive, a grace below D is proven wrong,
  and those trades come for a bar already closed (streamer/bar_revisions.py amends it).
- ``mute_after_s=A,mute_for_s=D``: server-wide, once: from A s after the replay started, for
  D s, the first tape's trades are sent on no connection, while the other tapes' trades and the
  pongs go on (published to REST all the same). One symbol's stream stopping inside a live
  connection it shares with others: the connection's flow and its pongs look healthy, and only
  the symbol's own silence shows the loss (streamer/feed_flow.py). ``mute_for_s`` longer than
  the replay: a stream that never comes back, not even on a new connection.
- ``duplicate_rate=P``: send a trade frame twice (back to back) with probability P.
- ``reorder_window=K``: shuffle the trades due at the same moment in chunks of K.
- ``malformed_rate=P``: with probability P, put a broken frame before a trade (added, never
  replacing one). The kinds cycle through ``malformed_kinds`` (default all of
  ``MALFORMED_KINDS``). What ccxt 4.5 does with each: ``unknown_event`` is ignored;
  ``missing_fields`` comes out of ``watch_trades`` as a trade whose id, price and amount are
  None; ``not_json`` and ``truncated_json`` raise inside ccxt's receive callback, which then
  stops reading that connection without raising anything to the caller (only a watchdog that
  reconnects gets the feed back).
- ``rest_error_rate=P,rest_error_status=S``: answer a trades request (aggTrades, trades,
  historicalTrades) with HTTP S (429 with ``Retry-After``, or 5xx) with probability P.
- ``klines_error_rate=P``: the same for a klines (candles) request, with the same status.

Random choices come from ``random.Random`` seeded by ``--seed`` (and the connection number),
so a run is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal

MalformedKind = Literal["not_json", "truncated_json", "missing_fields", "unknown_event"]
MALFORMED_KINDS: tuple[MalformedKind, ...] = ("not_json", "truncated_json", "missing_fields", "unknown_event")


class FaultSpecError(ValueError):
    """A ``--faults`` text that does not parse; the message names the bad part."""


@dataclass(frozen=True, slots=True)
class FaultSpec:
    drop_every_trades: int = 0
    drop_every_s: float = 0.0
    silent_after_s: float = 0.0
    silent_for_s: float = 0.0
    stall_after_s: float = 0.0
    late_after_s: float = 0.0
    late_for_s: float = 0.0
    late_ms: float = 0.0
    mute_after_s: float = 0.0
    mute_for_s: float = 0.0
    duplicate_rate: float = 0.0
    reorder_window: int = 0
    malformed_rate: float = 0.0
    malformed_kinds: tuple[MalformedKind, ...] = MALFORMED_KINDS
    rest_error_rate: float = 0.0
    rest_error_status: int = 429
    klines_error_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("drop_every_trades", "reorder_window"):
            if getattr(self, name) < 0:
                raise FaultSpecError(f"{name} must be >= 0")
        for name in ("drop_every_s", "silent_after_s", "silent_for_s", "stall_after_s", "late_after_s", "late_for_s",
                     "late_ms", "mute_after_s", "mute_for_s"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise FaultSpecError(f"{name} must be >= 0 seconds")
        for name in ("duplicate_rate", "malformed_rate", "rest_error_rate", "klines_error_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise FaultSpecError(f"{name} must be a probability in [0, 1], got {value}")
        if self.rest_error_status != 429 and not 500 <= self.rest_error_status <= 599:
            raise FaultSpecError(f"rest_error_status must be 429 or 5xx, got {self.rest_error_status}")
        if self.silent_after_s and not self.silent_for_s:
            raise FaultSpecError("silent_after_s needs silent_for_s")
        if self.mute_after_s and not self.mute_for_s:
            raise FaultSpecError("mute_after_s needs mute_for_s")
        if (self.late_for_s > 0) != (self.late_ms > 0):
            raise FaultSpecError("late_for_s and late_ms go together")
        if not self.malformed_kinds or any(k not in MALFORMED_KINDS for k in self.malformed_kinds):
            raise FaultSpecError(f"malformed_kinds must be among {MALFORMED_KINDS}")

    @property
    def any(self) -> bool:
        return self != FaultSpec()

    def late_at(self, elapsed_s: float) -> bool:
        """Whether the first tape's trades published ``elapsed_s`` after the start are sent late."""
        return self.late_for_s > 0 and self.late_after_s <= elapsed_s < self.late_after_s + self.late_for_s

    def muted_at(self, elapsed_s: float) -> bool:
        """Whether the first tape's trades published ``elapsed_s`` after the start are sent on no connection."""
        return self.mute_for_s > 0 and self.mute_after_s <= elapsed_s < self.mute_after_s + self.mute_for_s

    def silent_at(self, elapsed_s: float) -> bool:
        """Whether the feed is silent ``elapsed_s`` seconds after the replay started."""
        return self.silent_for_s > 0 and self.silent_after_s <= elapsed_s < self.silent_after_s + self.silent_for_s


_INT_KEYS = {"drop_every_trades", "reorder_window", "rest_error_status"}
_FLOAT_KEYS = {f.name for f in fields(FaultSpec)} - _INT_KEYS - {"malformed_kinds"}


def parse_faults(text: str) -> FaultSpec:
    """``"drop_every_trades=500,duplicate_rate=0.01"`` -> FaultSpec; FaultSpecError names the bad part.

    ``malformed_kinds`` takes kinds joined by ``+``: ``malformed_kinds=missing_fields+unknown_event``.
    """
    values: dict[str, object] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, raw = part.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not raw:
            raise FaultSpecError(f"fault {part!r} is not key=value")
        if key in values:
            raise FaultSpecError(f"fault {key!r} given twice")
        if key == "malformed_kinds":
            kinds = tuple(k for k in raw.split("+") if k)
            bad = [k for k in kinds if k not in MALFORMED_KINDS]
            if bad:
                raise FaultSpecError(f"unknown malformed kind(s) {bad}; known: {', '.join(MALFORMED_KINDS)}")
            values[key] = kinds
        elif key in _INT_KEYS:
            try:
                values[key] = int(raw)
            except ValueError:
                raise FaultSpecError(f"fault {key!r} needs an integer, got {raw!r}") from None
        elif key in _FLOAT_KEYS:
            try:
                values[key] = float(raw)
            except ValueError:
                raise FaultSpecError(f"fault {key!r} needs a number, got {raw!r}") from None
        else:
            known = ", ".join(sorted(_INT_KEYS | _FLOAT_KEYS | {"malformed_kinds"}))
            raise FaultSpecError(f"unknown fault {key!r}; known: {known}")
    return FaultSpec(**values)  # type: ignore[arg-type]
