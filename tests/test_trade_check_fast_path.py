"""The check's fast path for plain texts (digits, a point, digits) and for ccxt's int times and
digit ids gives what the full reading gives: the same exact Trade, or a refusal of the same field
for the same problem. The full reading is reached by passing the same text as a str subclass (the
same int as an int subclass): the fast path takes only the exact types."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from streamer.trade_validation import Refusal, check_trade, new_trade
from volcast.bar import Side, Trade

T0 = 1_700_000_040_000

# Plain texts around every bound of the fast path: up to 23 digits before the point (20 allowed),
# up to 33 after it (30 allowed), zeros and leading zeros, with and without the point.
plain_texts = st.builds(
    lambda whole, point, fraction: whole + (("." + fraction) if point else ""),
    st.text("0123456789", min_size=1, max_size=23) | st.sampled_from(["0", "00", "9" * 20, "9" * 21, "1" + "0" * 20]),
    st.booleans(),
    st.text("0123456789", max_size=33)
    | st.sampled_from(["", "0" * 30, "0" * 29 + "1", "0" * 30 + "1", "1" + "0" * 32]),
)


class FullText(str):
    """A str the fast path leaves alone (it asks ``type(value) is str``): read the full way."""


class FullInt(int):
    """An int the fast path leaves alone (it asks ``type(value) is int``)."""


def outcome(checked: Trade | Refusal) -> object:
    if isinstance(checked, Refusal):
        return (checked.reason, checked.problem, checked.trade_id, checked.timestamp_ms)
    return checked


@given(price=plain_texts, amount=plain_texts)
@example(price="0", amount="1")
@example(price="0.000", amount="1")
@example(price="1", amount="9" * 20 + "." + "9" * 30)
@example(price="1", amount="9" * 21)
@example(price="1", amount="0." + "0" * 30 + "1")
@example(price="5.", amount="1")
def test_plain_prices_and_amounts_as_the_full_reading_reads_them(price: str, amount: str) -> None:
    as_text = check_trade(T0, "1000001", price, amount, "buy")
    full = check_trade(T0, "1000001", FullText(price), FullText(amount), "buy")
    assert outcome(as_text) == outcome(full)
    if isinstance(as_text, Trade):
        # The same digits and exponent, not only an equal value: a bar's text shows them.
        assert as_text.price.as_tuple() == Decimal(price).as_tuple()
        assert as_text.amount.as_tuple() == Decimal(amount).as_tuple()


@given(trade_id=st.text("0123456789", min_size=1, max_size=22), timestamp=st.integers(-(2**64), 2**64))
@example(trade_id=str(2**63 - 1), timestamp=T0)
@example(trade_id=str(2**63), timestamp=T0)
@example(trade_id="0" * 20, timestamp=T0)
@example(trade_id="0" * 21, timestamp=T0)
def test_digit_ids_and_int_times_as_the_full_reading_reads_them(trade_id: str, timestamp: int) -> None:
    fast = check_trade(timestamp, trade_id, "1.5", "2", "sell")
    full = check_trade(FullInt(timestamp), FullText(trade_id), "1.5", "2", "sell")
    assert outcome(fast) == outcome(full)


def test_texts_off_the_fast_path_are_still_read() -> None:
    # Forms exchanges may send that the plain pattern leaves to the full reading.
    for text, value in ((".5", Decimal("0.5")), ("1E-30", Decimal("1E-30")), ("+2.5", Decimal("2.5"))):
        checked = check_trade(T0, "7", text, text, None)
        assert isinstance(checked, Trade) and checked.price == value and checked.amount == value
    for text, problem in (("-1", "not_positive"), ("NaN", "not_finite"), ("1E+20", "out_of_range")):
        refused = check_trade(T0, "7", text, "1", None)
        assert isinstance(refused, Refusal) and (refused.reason, refused.problem) == ("price", problem)
    refused = check_trade(T0, "١٢", "1", "1", None)  # Arabic-Indic digits: isdigit() but not ASCII
    assert isinstance(refused, Refusal) and (refused.reason, refused.problem) == ("id", "unreadable")


@given(
    timestamp=st.integers(0, 2**64), trade_id=st.integers(0, 2**64),
    price=st.decimals(allow_nan=True), amount=st.decimals(allow_nan=True),
    side=st.sampled_from(["buy", "sell", None]),
)
def test_new_trade_is_the_trade_the_dataclass_builds(
    timestamp: int, trade_id: int, price: Decimal, amount: Decimal, side: Side | None
) -> None:
    # check_trade builds its Trades through the slots (new_trade): the same object as Trade(...).
    built = new_trade(timestamp, trade_id, price, amount, side)
    made = Trade(timestamp, trade_id, price, amount, side)
    assert type(built) is Trade
    assert repr(built) == repr(made)
    assert all(getattr(built, name) is getattr(made, name) for name in Trade.__dataclass_fields__)
    if not (price.is_nan() or amount.is_nan()):  # NaN is not equal to itself, in a Trade too
        assert built == made and hash(built) == hash(made)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.price = Decimal(1)  # type: ignore[misc]
