"""A feed's health: its state and counters, as written to its Redis health hash."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class FeedState(StrEnum):
    CONNECTING = "connecting"
    LIVE = "live"
    BACKFILLING = "backfilling"
    DOWN = "down"
    STOPPED = "stopped"


@dataclass(slots=True)
class FeedHealth:
    """Counters of one feed since the process started (the aggregator counts trades, duplicates, late)."""

    state: FeedState = FeedState.CONNECTING
    last_trade_ms: int = 0  # exchange time of the newest trade seen
    last_message_ms: int = 0  # local time of the newest message
    trades: int = 0
    duplicates: int = 0
    late: int = 0
    gaps: int = 0  # holes that could not be backfilled (each marks its bars GAP)
    reconnects: int = 0
    watchdog_timeouts: int = 0
    backfilled_trades: int = 0
    lag_ms: int = 0  # local clock + exchange offset, minus the newest trade's time
    malformed: int = 0
    bars_closed: int = 0
    gap_bars: int = 0
    redis_buffered: int = 0  # closed bars (of all feeds) waiting for Redis
    dropped_bars: int = 0  # closed bars (of all feeds) lost to a full buffer
    redis_reconnects: int = 0  # times the bar writer got Redis back after an outage

    def to_fields(self, now_ms: int) -> dict[str, str]:
        fields = {name: str(getattr(self, name)) for name in self.__slots__ if name != "state"}
        fields["state"] = self.state.value
        fields["updated_ms"] = str(now_ms)
        return fields
