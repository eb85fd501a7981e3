"""Property tests: any mix of valid and invalid trades, in any order and with duplicates, gives the
bars of an exact reference (Python fractions) over the valid trades; bars holding a refused trade
say ``gap``, the others ``complete``."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.aggregator import BarAggregator, Outcome
from streamer.offline import aggregate_trades
from streamer.trade_validation import Refusal, check_trade, placed
from volcast.bar import Bar, BarStatus, Trade

MIN = 60_000
T0 = 1_700_000_040_000 - 1_700_000_040_000 % MIN

# Valid values, from tiny to huge: beyond the 28 digits of Python's default decimal context.
valid_numbers = st.one_of(
    st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal(1000), places=8),
    st.decimals(min_value=Decimal("1E-30"), max_value=Decimal("99999999999999999999"), places=30),
    st.sampled_from(["99999999999999999999.999999999999999999999999999999", "1E-30", "1.5E+19", "0.1"]),
).map(str)
invalid_numbers = st.sampled_from(
    ["NaN", "nan", "sNaN", "Infinity", "-Infinity", "inf", "-23", "0", "0.0", "-0", "1E+20", "1E-31", "1e999999"]
)
sides = st.sampled_from(["buy", "sell", ""])
bad_sides = st.sampled_from(["BUY", "x", "Sell", "long"])


@st.composite
def records(draw: st.DrawFn) -> list[Trade | Refusal]:
    """Rows as a trades file holds them, checked; ids unique, about a third of them refused."""
    out: list[Trade | Refusal] = []
    for trade_id in range(draw(st.integers(1, 50))):
        ts = T0 + draw(st.integers(0, 8 * MIN))
        price, amount, side = draw(valid_numbers), draw(valid_numbers), draw(sides)
        match draw(st.integers(0, 5)):
            case 0:
                price = draw(invalid_numbers)
            case 1:
                amount = draw(invalid_numbers)
            case 2:
                side = draw(bad_sides)
        out.append(check_trade(str(ts), str(trade_id), price, amount, side))
    return out


def reference(items: list[Trade | Refusal]) -> list[tuple[object, ...]]:
    """Exact bars of the valid trades, in fractions, with the status each bar must carry."""
    valid = [t for t in items if isinstance(t, Trade)]
    if not valid:
        return []
    stamps = [t.timestamp_ms for t in items if t.timestamp_ms is not None]
    first, last = min(t.timestamp_ms for t in valid), max(stamps)
    by_bar: dict[int, list[Trade]] = defaultdict(list)
    for t in valid:
        by_bar[t.timestamp_ms - t.timestamp_ms % MIN].append(t)
    refused_bars = {r.timestamp_ms - r.timestamp_ms % MIN for r in items if isinstance(r, Refusal) and r.timestamp_ms}
    bars: list[tuple[object, ...]] = []
    close = None
    for open_ms in range(first - first % MIN, last - last % MIN + 1, MIN):
        trades = sorted(by_bar.get(open_ms, []), key=lambda t: (t.timestamp_ms, t.trade_id))
        status = BarStatus.GAP if open_ms in refused_bars else BarStatus.COMPLETE
        if not trades:
            bars.append((open_ms, close, close, close, close, 0, 0, 0, 0, 0, status))
            continue
        close = Fraction(trades[-1].price)
        bars.append(
            (
                open_ms,
                Fraction(trades[0].price),
                max(Fraction(t.price) for t in trades),
                min(Fraction(t.price) for t in trades),
                close,
                sum(Fraction(t.amount) for t in trades),
                sum(Fraction(t.price) * Fraction(t.amount) for t in trades),
                len(trades),
                sum(Fraction(t.amount) for t in trades if t.side == "buy"),
                sum(Fraction(t.amount) for t in trades if t.side == "sell"),
                status,
            )
        )
    return bars


def exact(bar: Bar) -> tuple[object, ...]:
    assert bar.quote_volume is not None and bar.buy_volume is not None and bar.sell_volume is not None
    return (
        bar.open_time_ms,
        *(Fraction(v) for v in (bar.open, bar.high, bar.low, bar.close, bar.volume, bar.quote_volume)),
        bar.trades,
        Fraction(bar.buy_volume),
        Fraction(bar.sell_volume),
        bar.status,
    )


@settings(max_examples=150, deadline=None)
@given(records(), st.randoms(use_true_random=False), st.data())
def test_mixed_trades_in_any_order_with_duplicates_give_the_exact_bars(
    items: list[Trade | Refusal], rng: object, data: st.DataObject
) -> None:
    expected = reference(items)
    duplicates = data.draw(st.lists(st.sampled_from(items), max_size=20))
    arrival = items + duplicates
    rng.shuffle(arrival)  # type: ignore[attr-defined]
    bars, aggregator = aggregate_trades(arrival, MIN)
    assert [exact(b) for b in bars] == expected
    valid = sum(isinstance(t, Trade) for t in items)
    assert aggregator.trades == valid
    assert aggregator.refused == sum(isinstance(t, Refusal) for t in items)
    assert aggregator.duplicates == len(duplicates)
    # Nothing that is not a real number ever reaches a bar.
    for bar in bars:
        for value in (bar.open, bar.high, bar.low, bar.close, bar.volume, bar.quote_volume, bar.vwap):
            assert value is not None
            assert value.is_finite() and value >= 0
        assert bar.volume > 0 or bar.trades == 0


@settings(max_examples=100, deadline=None)
@given(records(), st.data())
def test_live_arrival_within_grace_gives_the_same_bars(items: list[Trade | Refusal], data: st.DataObject) -> None:
    """Live: each record arrives up to the grace after its time, watermarks in between; refused ones
    go in as the feed puts them (``refuse``), and the bars equal the offline ones."""
    grace = 3_000
    placed_items = [t if isinstance(t, Trade) else placed(t) for t in items]
    live = [t for t in placed_items if t is not None]
    if not any(isinstance(t, Trade) for t in live):
        return
    # A live feed's bars start at its first trade: records before it are late by then, and the
    # offline reference starts there too.
    first = min(t.timestamp_ms for t in live if isinstance(t, Trade))
    live = [t for t in live if t.timestamp_ms - t.timestamp_ms % MIN >= first - first % MIN]
    expected, _ = aggregate_trades([t if isinstance(t, Trade) else t.refusal for t in live], MIN)
    delays = data.draw(st.lists(st.integers(0, grace), min_size=len(live), max_size=len(live)))
    arrivals = sorted((t.timestamp_ms + d, i) for i, (t, d) in enumerate(zip(live, delays, strict=True)))
    bars: list[Bar] = []
    agg = BarAggregator(MIN, grace, bars.append)
    for arrival_ms, index in arrivals:
        item = live[index]
        if isinstance(item, Trade):
            assert agg.add(item) is Outcome.ADDED
        else:
            assert agg.refuse(item.trade_id, item.timestamp_ms) is Outcome.ADDED
        agg.advance(arrival_ms)  # the feed has reached the arrival time, and no further
    last = max(t.timestamp_ms for t in live)
    agg.advance(last - last % MIN + MIN + grace)
    assert bars == expected


def test_a_bar_of_only_refused_trades_is_an_empty_gap_bar() -> None:
    rows = [
        check_trade(T0 + 1, 1, "10", "1", "buy"),
        check_trade(T0 + MIN + 1, 2, "11", "NaN", "buy"),
        check_trade(T0 + 2 * MIN + 1, 3, "12", "2", "sell"),
    ]
    bars, aggregator = aggregate_trades(rows, MIN)
    assert [(b.volume, b.trades, b.close, b.status) for b in bars] == [
        (Decimal(1), 1, Decimal(10), BarStatus.COMPLETE),
        (Decimal(0), 0, Decimal(10), BarStatus.GAP),
        (Decimal(2), 1, Decimal(12), BarStatus.COMPLETE),
    ]
    assert aggregator.refused == 1


def test_a_row_without_usable_time_marks_the_bars_between_its_neighbours() -> None:
    rows = [
        check_trade(T0 + 1, 1, "10", "1", "buy"),
        check_trade("1700000000", 2, "10", "1", "buy"),  # seconds, not milliseconds
        check_trade(T0 + 2 * MIN + 1, 3, "12", "2", "sell"),
        check_trade(T0 + 3 * MIN + 1, 4, "12", "2", "sell"),
    ]
    assert isinstance(rows[1], Refusal) and rows[1].reason == "timestamp" and rows[1].timestamp_ms is None
    bars, _ = aggregate_trades(rows, MIN)
    assert [b.status for b in bars] == [BarStatus.GAP, BarStatus.GAP, BarStatus.GAP, BarStatus.COMPLETE]


def test_sums_beyond_28_digits_stay_exact() -> None:
    big, small = "99999999999999999999", "0.000000000000000000000000000001"
    rows = [check_trade(T0 + 1, 1, "1", big, "buy"), check_trade(T0 + 2, 2, "1", small, "buy")]
    bars, _ = aggregate_trades(rows, MIN)
    assert Fraction(bars[0].volume) == Fraction(big) + Fraction(small)
    assert bars[0].to_fields()["volume"] == "99999999999999999999.000000000000000000000000000001"


def test_the_lowest_digit_counts_not_the_written_zeros() -> None:
    # A digit below 10**-30 is refused; zeros written after the last digit are not digits.
    def problem(price: str) -> str | None:
        checked = check_trade(T0, 1, price, "1", "buy")
        return checked.problem if isinstance(checked, Refusal) else None

    assert problem("0." + "0" * 29 + "1") is None  # 1E-30
    assert problem("0." + "0" * 30 + "1") == "out_of_range"  # 1E-31
    assert problem("0.1" + "0" * 40) is None  # 41 decimals, the lowest digit at 10**-1
    assert problem("12" + "0" * 17 + ".000") is None
    assert problem("0." + "0" * 29 + "10000") is None  # 1E-30 followed by zeros
