"""Pure parts of the exchange simulator: file names, fault specs, tapes, time shifts, REST selection."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from streamer.simulator import FaultSpec, FaultSpecError, load_tape, parse_faults, symbol_from_filename
from streamer.simulator.clock import ReplayClock
from streamer.simulator.flood import synthetic_tape
from streamer.simulator.frames import trade_frame
from streamer.simulator.published import PublishedTrades
from streamer.simulator.tape import load_tapes, normalise_symbol
from streamer.simulator.timeline import DAY_MS, Timeline, day_shift_ms, loop_period_ms
from streamer.simulator.websocket import ws_header

DATA = Path(__file__).parent / "data"
BTC = DATA / "binance_BTCUSDT_trades_2021-01-08_000000-000046.csv.gz"
XRP = DATA / "binance_XRPETH_trades_2019-10-11_2019-10-13.csv.gz"
ETH = DATA / "unknown-exchange_ETHUSDT_trades_2023-02-02_0920.csv.gz"


@pytest.mark.parametrize(
    ("name", "symbol"),
    [
        ("binance_XRPETH_trades_2019-10-11_2019-10-13.csv.gz", "XRP/ETH"),
        ("binance_BTCUSDT_trades_2021-01-08_000000-000046.csv.gz", "BTC/USDT"),
        ("unknown-exchange_ETHUSDT_trades_2023-02-02_0920.csv.gz", "ETH/USDT"),
        ("kraken_BTCUSD_trades.csv", "BTC/USD"),
        ("x_SOLUSDC_trades.csv", "SOL/USDC"),
        ("x_BNBBUSD_t.csv", "BNB/BUSD"),
        ("x_ETHBTC_t.csv", "ETH/BTC"),
        ("x_ADABNB_t.csv", "ADA/BNB"),
        ("x_BTCEUR_t.csv", "BTC/EUR"),
    ],
)
def test_symbol_from_filename(name: str, symbol: str) -> None:
    assert symbol_from_filename(name) == symbol


@pytest.mark.parametrize("name", ["trades.csv.gz", "binance_BTCXYZ_trades.csv", "binance_USDT_trades.csv"])
def test_symbol_from_filename_refuses_names_without_a_pair(name: str) -> None:
    with pytest.raises(ValueError, match="no symbol in file name"):
        symbol_from_filename(name)


def test_normalise_symbol() -> None:
    assert normalise_symbol("btc/usdt") == "BTC/USDT"
    assert normalise_symbol("XRPETH") == "XRP/ETH"
    with pytest.raises(ValueError):
        normalise_symbol("BTC/")


def test_parse_faults_full_spec() -> None:
    spec = parse_faults(
        "drop_every_trades=500,silent_after_s=3,silent_for_s=5,duplicate_rate=0.01,reorder_window=5,"
        "malformed_rate=0.01,rest_error_rate=0.2,rest_error_status=429,drop_every_s=2"
    )
    assert spec == FaultSpec(
        drop_every_trades=500,
        silent_after_s=3.0,
        silent_for_s=5.0,
        duplicate_rate=0.01,
        reorder_window=5,
        malformed_rate=0.01,
        rest_error_rate=0.2,
        rest_error_status=429,
        drop_every_s=2.0,
    )
    assert spec.any and not FaultSpec().any
    assert parse_faults("") == FaultSpec()
    assert parse_faults("malformed_kinds=missing_fields+unknown_event").malformed_kinds == (
        "missing_fields",
        "unknown_event",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("drop_every_tardes=5", "unknown fault 'drop_every_tardes'"),
        ("duplicate_rate=1.5", "duplicate_rate must be a probability"),
        ("duplicate_rate=x", "needs a number"),
        ("drop_every_trades=2.5", "needs an integer"),
        ("drop_every_trades", "not key=value"),
        ("reorder_window=-1", "reorder_window must be >= 0"),
        ("rest_error_status=404", "429 or 5xx"),
        ("silent_after_s=3", "silent_after_s needs silent_for_s"),
        ("silent_for_s=nan", "silent_for_s must be >= 0"),
        ("duplicate_rate=0.1,duplicate_rate=0.2", "given twice"),
        ("malformed_kinds=nonsense", "unknown malformed kind"),
    ],
)
def test_parse_faults_rejects_bad_specs(text: str, message: str) -> None:
    with pytest.raises(FaultSpecError, match=message):
        parse_faults(text)


def test_silence_window() -> None:
    spec = FaultSpec(silent_after_s=3, silent_for_s=5)
    assert [spec.silent_at(t) for t in (0, 2.99, 3, 7.99, 8)] == [False, False, True, True, False]
    assert not FaultSpec().silent_at(3)


def test_load_tape_keeps_the_recorded_strings() -> None:
    tape = load_tape(BTC)
    assert tape.symbol == "BTC/USDT" and tape.market_id == "BTCUSDT"
    assert len(tape.trades) == 2001 and tape.id_span == 2001
    with gzip.open(BTC, "rt") as handle:
        rows = [line.rstrip("\n").split(",") for line in handle][1:]
    assert [(t.timestamp_ms, t.trade_id, t.price, t.amount, t.buyer_maker) for t in tape.trades] == [
        (int(ts), int(i), p, a, side == "sell") for ts, i, p, a, side in rows
    ]


def test_load_tape_plain_csv_and_explicit_symbol(tmp_path: Path) -> None:
    path = tmp_path / "recording.csv"
    path.write_text("timestamp_ms,trade_id,price,amount,side\n1000,7,1.50,2.000,buy\n1000,8,1.5,3,sell\n")
    tape = load_tape(path, "sol/usdt")
    assert tape.symbol == "SOL/USDT"
    assert [(t.trade_id, t.price, t.amount, t.buyer_maker) for t in tape.trades] == [
        (7, "1.50", "2.000", False),
        (8, "1.5", "3", True),
    ]
    path.write_text("timestamp_ms,trade_id,price,amount,side\n1000,7,1.50,2.000,short\n")
    with pytest.raises(ValueError, match=r"no trades"):
        load_tape(path, "SOL/USDT")


def test_rows_the_replay_cannot_send_are_skipped_and_bad_numbers_kept(tmp_path: Path) -> None:
    """A faulty exchange's numbers (NaN, Infinity, negative) are replayed as written: the streamer
    must withstand them. What cannot be sent at all (no number, no integer id or time, no side)
    is skipped at load and reported with its line."""
    path = tmp_path / "edited.csv"
    path.write_text(
        "timestamp_ms,trade_id,price,amount,side\n"
        "1000,1,1.5,2,buy\n1000,2,abc,2,buy\n1001,3,1.5,NaN,sell\n1002,4.5,1.5,2,buy\n"
        "1003,5,1.5,-23,buy\nsoon,6,1.5,2,buy\n1004,7,1.5,Infinity,sell\n1005,8,1.5,2,up\n1006,9,,2,buy\n"
    )
    tape = load_tape(path, "SOL/USDT")
    assert [(t.trade_id, t.amount) for t in tape.trades] == [(1, "2"), (3, "NaN"), (5, "-23"), (7, "Infinity")]
    assert [s.split(": ", 1)[0] for s in tape.skipped] == [f"{path}:{n}" for n in (3, 5, 7, 9, 10)]
    assert "price 'abc' is not a number" in tape.skipped[0]


def test_load_tapes_checks_symbols() -> None:
    with pytest.raises(ValueError, match="one per file"):
        load_tapes([BTC, ETH], ["BTC/USDT"])
    with pytest.raises(ValueError, match="same symbol"):
        load_tapes([BTC, BTC])


def test_day_shift_keeps_time_of_day() -> None:
    first = 1_570_752_011_620  # 2019-10-11 00:00:11.620 UTC
    now = 1_795_599_000_000
    shift = day_shift_ms(first, now)
    assert shift % DAY_MS == 0
    assert now - DAY_MS < first + shift <= now
    assert loop_period_ms(first, first) == DAY_MS
    assert loop_period_ms(first, first + DAY_MS - 1) == DAY_MS
    assert loop_period_ms(first, first + DAY_MS) == 2 * DAY_MS


def test_rebased_timeline_merges_files_and_moves_whole_days() -> None:
    tapes = [load_tape(BTC), load_tape(ETH), load_tape(XRP)]
    now = 1_795_599_000_000
    timeline = Timeline.rebased(tapes, now)
    assert len(timeline) == 2001 + 1000 + 12477
    assert all(s % DAY_MS == 0 for s in timeline.shifts_ms)
    stamps = [timeline.timestamp(0, i) for i in range(len(timeline))]
    assert stamps == sorted(stamps)
    # within each tape the order is the file's order
    for ti, tape in enumerate(tapes):
        ks = [k for t, k in timeline.order if t == ti]
        assert ks == list(range(len(tape.trades)))
    assert timeline.first_ms > now - DAY_MS
    assert timeline.period_ms % DAY_MS == 0
    assert timeline.timestamp(1, 0) > timeline.last_ms


def test_clock_never_passes_an_unpublished_trade() -> None:
    now = [100.0]
    clock = ReplayClock(1_000_000.0, 60.0, monotonic=lambda: now[0])
    assert clock.now_ms() == 1_000_000
    now[0] += 1.0
    assert clock.now_ms() == 1_060_000
    clock.hold_below = 1_050_000
    assert clock.now_ms() == 1_060_000  # never backwards
    assert clock.seconds_until(1_120_000) == pytest.approx(1.0)
    now[0] += 1.0
    clock.hold_below = 1_100_000
    assert clock.now_ms() == 1_099_999
    clock.hold_below = None
    assert clock.now_ms() == 1_120_000


def test_published_trades_follow_binance_selection_across_loops() -> None:
    tape = synthetic_tape("BTC/USDT", 10, start_ms=1_000, first_id=100)
    period = loop_period_ms(1_000, 1_009)
    store = PublishedTrades(tape, 0, period)
    store.advance(25)  # two passes and a half
    assert [t.trade_id for t in store.last(3)] == [122, 123, 124]
    assert [t.trade_id for t in store.from_id(108, 4)] == [108, 109, 110, 111]
    assert store.from_id(125, 10) == []
    assert [t.trade_id for t in store.from_id(0, 2)] == [100, 101]
    assert [t.timestamp_ms for t in store.from_id(110, 1)] == [1_000 + period]
    assert [t.trade_id for t in store.between(1_003, 1_005, 10)] == [103, 104, 105]
    assert [t.trade_id for t in store.between(1_003, None, 2)] == [103, 104]
    assert [t.trade_id for t in store.between(None, 1_005, 2)] == [104, 105]
    assert [t.trade_id for t in store.between(1_000 + period, 1_000 + period + 1, 10)] == [110, 111]
    assert store.between(1_000 + 2 * period + 6, None, 10) == []  # not published yet


def test_trade_frame_is_binance_json_with_exact_strings() -> None:
    frame = trade_frame(b"BTCUSDT", 1_610_064_000_278, 553287559, "39432.48", "0.014596000000000001", True)
    assert orjson.loads(frame) == {
        "e": "trade",
        "E": 1_610_064_000_278,
        "s": "BTCUSDT",
        "t": 553287559,
        "p": "39432.48",
        "q": "0.014596000000000001",
        "T": 1_610_064_000_278,
        "m": True,
        "M": True,
    }


def test_ws_header_lengths() -> None:
    assert ws_header(5) == b"\x81\x05"
    assert ws_header(200) == b"\x81\x7e\x00\xc8"
    assert ws_header(70_000) == b"\x81\x7f" + (70_000).to_bytes(8, "big")


def test_synthetic_tape_ids_and_times() -> None:
    tape = synthetic_tape("ETH/USDT", 1000, start_ms=60_000, first_id=5)
    assert [t.trade_id for t in tape.trades] == list(range(5, 1005))
    assert [t.timestamp_ms for t in tape.trades] == list(range(60_000, 61_000))
    assert all(float(t.price) > 0 and float(t.amount) > 0 for t in tape.trades)
