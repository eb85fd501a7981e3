"""A feed's health: its state and counters, as written to its Redis health hash."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from streamer.trade_validation import Reason


class FeedState(StrEnum):
    CONNECTING = "connecting"
    LIVE = "live"
    BACKFILLING = "backfilling"
    DOWN = "down"  # disconnected, retrying with backoff; ``error`` says why
    ERROR = "error"  # stopped for good (until a restart); ``error`` says why and what to do
    STOPPED = "stopped"


@dataclass(slots=True)
class FeedHealth:
    """Counters of one feed since the process started (the aggregator counts trades, duplicates, late)."""

    state: FeedState = FeedState.CONNECTING
    error: str = ""  # why the feed is down or stopped in error; empty while it works
    last_trade_ms: int = 0  # exchange time of the newest trade seen
    last_message_ms: int = 0  # local time of the newest message
    trades: int = 0
    duplicates: int = 0
    late: int = 0  # trades for a closed bar too old to amend: counted, in no bar
    amended: int = 0  # trades for a recently closed bar: added to it, the bar rewritten (a revision)
    bars_amended: int = 0  # bar revisions written (a late trade's bar, and empty bars after it it re-priced)
    gaps: int = 0  # holes that could not be backfilled (each marks its bars GAP)
    reconnects: int = 0
    watchdog_timeouts: int = 0
    backfilled_trades: int = 0
    lag_ms: int = 0  # local clock + exchange offset, minus the newest trade's time
    malformed: int = 0  # records refused (each also counted under malformed_<reason>)
    malformed_frame: int = 0  # websocket frames that could not be parsed at all
    malformed_id: int = 0
    malformed_timestamp: int = 0
    malformed_side: int = 0
    malformed_price: int = 0
    malformed_amount: int = 0
    bars_closed: int = 0  # complete + backfilled + gap
    gap_bars: int = 0
    backfilled_bars: int = 0
    redis_buffered: int = 0  # closed bars (of all feeds) waiting for Redis
    dropped_bars: int = 0  # closed bars (of all feeds) lost to a full buffer
    redis_reconnects: int = 0  # times the bar writer got Redis back after an outage
    replica_waits: int = 0  # WAITs sent after bar batches (redis.wait_replicas; of all feeds)
    replica_wait_timeouts: int = 0  # of them, those fewer replicas acknowledged in time
    bars_restored: int = 0  # this feed's bars Redis lost (a failover) and the streamer wrote again (lost_bars.py)
    bars_not_restored: int = 0  # of its lost bars, those older than the streamer kept: missing
    # How bars closed (streamer/close_proof.py): counts per proof, and the delay from a bar's end
    # to its close on the exchange's clock (bars that ended while the feed was live).
    closed_by_trade: int = 0
    closed_by_liveness: int = 0
    closed_by_rest: int = 0
    close_delay_last_ms: int = 0
    close_delay_p50_ms: int = 0
    close_delay_p99_ms: int = 0
    close_delay_max_ms: int = 0
    # Trade time to arrival, on the exchange's clock (websocket trades); grace must stay above it.
    delivery_p50_ms: int = 0
    delivery_p99_ms: int = 0
    delivery_max_ms: int = 0
    delivery_ewma_ms: int = 0
    # The grace the closing proofs use now (bars.grace, exchanges[].grace, or its auto value) and
    # whether it is auto, and raised (1 for 10 minutes after a late trade).
    grace_ms: int = 0
    grace_auto: int = 0
    grace_raised: int = 0
    pings: int = 0  # pings sent on the feed's current connection (shared by its symbols)
    pongs: int = 0
    stalls: int = 0  # trade flows (its connection's or the exchange's) that stopped implausibly
    rest_checks: int = 0  # REST reads that confirmed the bars after a stall
    time_reversals: int = 0  # a trade older than the one before it by id (consecutive ids assumed monotone)

    def count_malformed(self, reason: Reason) -> None:
        self.malformed += 1
        name = f"malformed_{reason}"
        setattr(self, name, getattr(self, name) + 1)

    def to_fields(self, now_ms: int) -> dict[str, str]:
        fields = {name: str(getattr(self, name)) for name in self.__slots__ if name != "state"}
        fields["state"] = self.state.value
        fields["updated_ms"] = str(now_ms)
        return fields
