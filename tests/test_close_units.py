"""The parts of the closing rule that need no network: the aggregator's proof-driven closing, the
flow guard, the ping/pong bookkeeping of a connection, and the closing figures."""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace

from streamer.aggregator import BarAggregator
from streamer.close_proof import CloseProof, CloseStats, DeliveryStats, percentile
from streamer.liveness import ConnectionProbe, ExchangeClock, FlowGuard
from volcast.bar import Bar, Trade

SEC = 1_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % 60_000


def _trade(trade_id: int, timestamp_ms: int) -> Trade:
    return Trade(trade_id=trade_id, timestamp_ms=timestamp_ms, price=Decimal(10), amount=Decimal(1), side="buy")


def test_close_until_closes_the_bars_that_end_by_then_without_grace() -> None:
    bars: list[Bar] = []
    agg = BarAggregator(SEC, 200, bars.append)
    agg.add(_trade(1, T0 + 10))
    assert agg.next_end_ms == T0 + SEC
    assert agg.close_until(T0 + SEC - 1) == 0
    assert agg.close_until(T0 + SEC) == 1  # a trade stamped at the end belongs to the next bar
    assert agg.close_until(T0 + 3 * SEC + 999) == 2  # empty bars too
    assert [b.open_time_ms for b in bars] == [T0, T0 + SEC, T0 + 2 * SEC]
    # advance keeps its grace: a watermark must pass end + grace.
    assert agg.advance(T0 + 4 * SEC + 199) == 0
    assert agg.advance(T0 + 4 * SEC + 200) == 1


def test_a_busy_flow_caps_proofs_at_its_newest_trade_and_a_long_silence_is_a_stall() -> None:
    flow = FlowGuard(ratio=20, floor_s=1.0, warm_frames=10, warm_gap_s=0.1)
    assert flow.cap_ms() is None and flow.limit_s() == float("inf")  # cold: never judged
    for i in range(20):
        flow.note(i * 0.01)
        flow.newest_ms = T0 + i * 10
    assert flow.warm
    assert flow.cap_ms() == T0 + 190
    assert flow.limit_s() == 1.0  # 20 x 10 ms is below the floor
    assert not flow.suspect(0.19 + 0.9)
    assert flow.suspect(0.19 + 1.1)
    assert flow.suspect(0.19 + 1.2)  # the same silence: one episode
    assert flow.episodes == 1 and flow.first_since(0) == T0 + 190
    assert flow.silent_beyond_limit_s(0.19 + 1.5) > 0.4
    flow.note(5.0)  # the end of that silence: still one episode
    assert flow.episodes == 1 and not flow.suspect(5.1)
    # A silence nobody looked at is registered by the frame that ends it.
    flow.note(9.0)
    assert flow.episodes == 2 and flow.first_since(1) == T0 + 190
    assert flow.first_since(2) is None


def test_a_quiet_flow_is_cold() -> None:
    flow = FlowGuard(warm_frames=10, warm_gap_s=0.1)
    for i in range(50):
        flow.note(i * 5.0)  # a trade every 5 s
    assert not flow.warm and flow.cap_ms() is None
    assert not flow.suspect(1000.0)


class _Connection:
    closed = False

    def __init__(self) -> None:
        self.pings: list[bytes] = []

    async def ping(self, payload: bytes) -> None:
        self.pings.append(payload)


async def test_a_pong_proves_the_send_time_of_its_ping_and_settles_older_ones() -> None:
    connection = _Connection()
    probe = ConnectionProbe(SimpleNamespace(connection=connection))
    await probe.ping()
    first_sent = probe.proven_local_ms
    assert first_sent == -1 and probe.unanswered_s(probe.last_ping + 5) >= 5
    await probe.ping()
    assert probe.on_pong(b"") is False  # ccxt's own keep-alive: no proof
    assert probe.on_pong(connection.pings[1]) is True
    assert probe.proven_local_ms > 0
    assert probe.unanswered_s(probe.last_ping + 5) == 0  # the older ping is settled too
    assert probe.on_pong(connection.pings[0]) is False
    assert (probe.pings, probe.pongs) == (2, 1)


async def test_pings_keep_the_connection_within_two_messages_a_second() -> None:
    connection = _Connection()
    probe = ConnectionProbe(SimpleNamespace(connection=connection))
    probe.sent_message()  # ccxt sent a subscription
    assert probe.pace_s() == 0
    await probe.ping()
    assert probe.pace_s() > 0.9  # two within the last second: the next waits for the first to age
    assert len(connection.pings) == 1


def test_a_probe_pings_when_a_wanted_moment_has_come_unless_a_ping_covers_it() -> None:
    probe = ConnectionProbe(SimpleNamespace(connection=_Connection()))
    probe.needs[1] = T0 + 2 * SEC
    assert not probe.due(T0 + SEC, 0)
    assert probe.due(T0 + 2 * SEC, 0)
    probe.proven_local_ms = T0 + 2 * SEC
    assert not probe.due(T0 + 3 * SEC, 0)


def test_subscription_answers_are_noted() -> None:
    probe = ConnectionProbe(SimpleNamespace(connection=None))
    probe.on_text('{"result":null,"id":7}')
    probe.on_text('{"result":["btcusdt@trade"],"id":8}')  # an answer to LIST_SUBSCRIPTIONS
    probe.on_text('{"e":"trade","t":1}')
    assert list(probe.acked) == [7]


def test_the_clock_bound_never_overstates() -> None:
    clock = ExchangeClock()
    assert clock.now_low() is None
    clock.note_reading(server_ms=T0 + 500, before_ms=T0 - 2, after_ms=T0)  # the answer came at our T0
    clock.note_reading(server_ms=T0 + 300, before_ms=T0 - 200, after_ms=T0)  # a slower round trip
    assert clock.low_ms == 500  # a lower bound: the best of them
    assert clock.mid_ms == 501  # the midpoint of the shortest round trip


def test_close_figures() -> None:
    assert percentile([], 0.99) == 0
    assert percentile(list(range(1, 101)), 0.5) == 50
    assert percentile(list(range(1, 101)), 0.99) == 99
    assert percentile([7], 0.99) == 7
    stats = CloseStats()
    stats.record(CloseProof.TRADE, 5)
    stats.record(CloseProof.LIVENESS, 2100)
    stats.record(CloseProof.LIVENESS, None)  # closed before the feed was live: counted, no delay
    fields = stats.fields()
    assert (fields["closed_by_trade"], fields["closed_by_liveness"], fields["closed_by_rest"]) == (1, 2, 0)
    assert (fields["close_delay_last_ms"], fields["close_delay_max_ms"]) == (2100, 2100)
    delivery = DeliveryStats()
    for delay in (3, 4, 100):
        delivery.record(delay)
    assert delivery.fields()["delivery_max_ms"] == 100
    assert delivery.fields()["delivery_p50_ms"] == 4


def test_a_bar_is_backfilled_only_for_trades_the_websocket_never_delivered() -> None:
    bars: list[Bar] = []
    agg = BarAggregator(SEC, 0, bars.append)
    agg.add(_trade(1, T0 + 1), backfilled=True)
    agg.add(_trade(2, T0 + 2), backfilled=True)
    assert agg.add(_trade(1, T0 + 1)).value == "duplicate"  # the live copy of a REST trade
    agg.delivered_live(2, T0 + 2)  # one the feed dropped itself as "REST had it first"
    agg.add(_trade(3, T0 + SEC + 1), backfilled=True)  # REST only
    agg.close_until(T0 + 2 * SEC)
    assert [b.status.value for b in bars] == ["complete", "backfilled"]


def test_a_silence_found_on_the_frame_that_ends_it_starts_before_that_frames_trade() -> None:
    """The feeds note a frame's trade (newest_ms) before the flow sees the frame: the stall must
    start at the newest trade before the silence, not at the one that ended it (a pong would
    otherwise prove the silence's trades in; tests/test_close_faults.py found it)."""
    flow = FlowGuard(ratio=20, floor_s=1.0, warm_frames=10, warm_gap_s=0.1)
    for i in range(20):
        flow.newest_ms = T0 + i * 10
        flow.note(i * 0.01)
    flow.newest_ms = T0 + 9_000  # the trade of the frame that ends a 5 s silence nobody looked at
    flow.note(5.0)
    assert flow.episodes == 1 and flow.first_since(0) == T0 + 190


def test_subscription_answers_are_not_frames_of_the_trade_flow() -> None:
    """After a reconnect the answers to its subscriptions come while a stalled stream sends
    nothing: counted as the flow's frames, they cut the stall into silences too short to see."""
    from aiohttp import WSMsgType

    from streamer.liveness import Liveness

    exchange = SimpleNamespace(clients={}, id="binance", has={})
    liveness = Liveness(exchange, keepalive_s=10.0, on_proof=lambda _p: None)
    client = SimpleNamespace(connection=None, subscriptions={})
    liveness.on_frame(client, SimpleNamespace(type=WSMsgType.TEXT, data='{"result":null,"id":3}'))
    probe = liveness.probe(client)
    assert liveness.flow.frames == 0 and probe.flow.frames == 0
    assert 3 in probe.acked  # still noted as the subscription's confirmation
    liveness.on_frame(client, SimpleNamespace(type=WSMsgType.TEXT, data='{"e":"trade","s":"BTCUSDT"}'))
    assert liveness.flow.frames == 1 and probe.flow.frames == 1


async def test_a_ping_waiting_behind_frames_still_arriving_is_not_a_dead_connection() -> None:
    # Under a flood the server's pong waits behind the frames it wrote first: while frames keep
    # coming the connection is alive (the watchdog judges unheard_s, not unanswered_s).
    connection = _Connection()
    probe = ConnectionProbe(SimpleNamespace(connection=connection))
    await probe.ping()
    sent = probe.last_ping
    assert probe.unheard_s(sent + 5) >= 5  # nothing heard at all: as long as the ping has waited
    for i in range(50):
        probe.flow.note(sent + 0.1 * i)  # frames keep arriving for 5 s, the pong behind them
    assert probe.unanswered_s(sent + 5) >= 5
    assert probe.unheard_s(sent + 5) < 0.2
    assert probe.unheard_s(sent + 9) >= 4  # then silence: unheard since the last frame
    assert probe.on_pong(connection.pings[0]) is True
    assert probe.unheard_s(sent + 9) == 0  # answered: nothing is waiting
