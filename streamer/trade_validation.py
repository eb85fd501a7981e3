"""The one check every trade passes where it enters: websocket, REST backfill, trades CSV, simulator tape.

``check_trade`` turns the raw fields of a record (text, ints, floats, Decimals or None, as each
source has them) into an exact ``Trade``, or into a ``Refusal`` that says which field is wrong
and why. A usable trade has:

- an id: an integer in [0, 2**63) (digits only, when text);
- a timestamp: integer milliseconds in [2009-01-03, 2100-01-01) UTC. Seconds, microseconds,
  negative or absent times fall outside. (The live feed also refuses a time more than
  ``MAX_AHEAD_MS`` past the exchange's clock: see ``ahead_of_clock``.)
- a price and an amount: decimal numbers, finite, greater than zero, below 10**20 and with no
  digit below 10**-30. Within these bounds every sum a bar makes is exact in ``EXACT``
  (volcast/bar.py); NaN, Infinity, negative, zero and absurd magnitudes are refused;
- a side: ``buy``, ``sell`` or None (an exchange that hides the taker side).

A refusal keeps the id and the timestamp when they are usable: a trade the exchange recorded with
a bad value is still a trade that happened, so its bar is marked (status ``gap``) and, where ids
are consecutive, its id counts as seen (no hole, no backfill of it).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from volcast.bar import Side, Trade

# Which field made a record unusable; ``frame`` is a websocket frame that could not be parsed at
# all. Each has a ``malformed_<reason>`` counter in the feed's health hash.
Reason = Literal["frame", "id", "timestamp", "side", "price", "amount"]
REASONS: tuple[Reason, ...] = ("frame", "id", "timestamp", "side", "price", "amount")

# What is wrong with the field: ``missing`` and ``unreadable`` (not a number at all) cannot be
# replayed by the simulator; the others are values a faulty exchange could send.
Problem = Literal["missing", "unreadable", "not_finite", "not_positive", "out_of_range", "unknown"]

MIN_TIMESTAMP_MS = 1_230_940_800_000  # 2009-01-03T00:00:00Z, the first Bitcoin block
MAX_TIMESTAMP_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z
MAX_TRADE_ID = 2**63 - 1
MAX_ADJUSTED_EXPONENT = 19  # a value below 10**20
MIN_DIGIT_EXPONENT = -30  # no digit below 10**-30
MAX_AHEAD_MS = 3_600_000  # a live trade may be stamped at most this far past the exchange's clock

_INTEGER = re.compile(r"-?[0-9]{1,20}")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,9})?")
_NOT_FINITE = re.compile(r"[+-]?(?:nan|snan|inf|infinity)", re.IGNORECASE)
# What exchanges send for almost every price and amount: plain digits, at most 20 before the point
# and 30 after it. Such a text is finite, below 10**20 and has no digit below 10**-30, so of the
# checks only "not zero" is left (``_decimal``'s fast path, on every price and amount of every
# trade). Any other text takes the full reading, which gives the same answer for these.
_PLAIN_DECIMAL = re.compile(r"[0-9]{1,20}(?:\.[0-9]{0,30})?")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a record is not a usable trade, with the id and timestamp if those are usable."""

    reason: Reason
    problem: Problem
    detail: str
    trade_id: int | None = None
    timestamp_ms: int | None = None

    def __str__(self) -> str:
        return f"{self.reason} {self.detail}"


@dataclass(frozen=True, slots=True)
class RefusedTrade:
    """A refused record whose id and time are known: it happened, in a known bar, with a bad value."""

    trade_id: int
    timestamp_ms: int
    refusal: Refusal


class _Bad(Exception):  # noqa: N818 - internal: carries one field's refusal out of a parser
    def __init__(self, problem: Problem, detail: str) -> None:
        self.problem: Problem = problem
        self.detail = detail


def _text(value: object) -> str:
    """The value as a message shows it: repr, cut at 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _integer(value: object) -> int:
    # The two forms ccxt gives (an int time, an id of ASCII digits) first: on every trade.
    if type(value) is int:
        return value
    if type(value) is str and value.isascii() and value.isdigit() and len(value) <= 20:
        return int(value)
    if value is None or value == "":
        raise _Bad("missing", "is missing")
    if isinstance(value, bool):
        raise _Bad("unreadable", f"{value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        if _INTEGER.fullmatch(value):
            return int(value)
        raise _Bad("unreadable", f"{_text(value)} is not an integer")
    if isinstance(value, float | Decimal):
        try:
            if value == int(value):
                return int(value)
        except (ValueError, OverflowError, ArithmeticError):
            pass
        raise _Bad("unreadable", f"{value!r} is not an integer")
    raise _Bad("unreadable", f"{type(value).__name__} {_text(value)} is not an integer")


def _read_decimal(value: object) -> Decimal:
    """The number a field holds, NaN and Infinity included; only missing or non-numbers fail."""
    if value is None or value == "":
        raise _Bad("missing", "is missing")
    if isinstance(value, bool):
        raise _Bad("unreadable", f"{value!r} is not a number")
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        # repr: the shortest text that reads back as this float, i.e. the digits that were sent
        return Decimal(repr(value))
    if isinstance(value, str) and (_DECIMAL.fullmatch(value) or _NOT_FINITE.fullmatch(value)):
        return Decimal(value)
    raise _Bad("unreadable", f"{_text(value)} is not a number")


def _decimal(value: object) -> Decimal:
    plain = plain_decimal(value)
    if plain is not None:  # None for zero too: refused below, with the full reading's words
        return plain
    number = _read_decimal(value)
    if not number.is_finite():
        raise _Bad("not_finite", f"{_text(value)} is not finite")
    if number <= 0:
        raise _Bad("not_positive", f"{_text(value)} is not positive")
    if number.adjusted() > MAX_ADJUSTED_EXPONENT:
        raise _Bad("out_of_range", f"{_text(value)} is 10**20 or more")
    _sign, digits, exponent = number.as_tuple()
    end = len(digits)  # trailing zeros counted on the tuple: on every price and amount of every trade
    while end and digits[end - 1] == 0:
        end -= 1
    if int(exponent) + len(digits) - end < MIN_DIGIT_EXPONENT:
        raise _Bad("out_of_range", f"{_text(value)} has digits below 10**{MIN_DIGIT_EXPONENT}")
    return number


def plain_decimal(value: object) -> Decimal | None:
    """The Decimal of a text of plain digits other than zero (such a text passes every check of a
    price or amount: ``_decimal``'s fast path, and binance_frames.py's), else None: let
    ``check_trade`` read it."""
    if type(value) is str and _PLAIN_DECIMAL.fullmatch(value):
        plain = Decimal(value)
        if plain:
            return plain
    return None


def _side(value: object) -> Side | None:
    if value is None or value == "":
        return None
    if value == "buy":
        return "buy"
    if value == "sell":
        return "sell"
    raise _Bad("unknown", f"{_text(value)} is not buy, sell or empty")


# A Trade built by setting its slots through their descriptors: the frozen dataclass's own
# ``__init__`` sets each field with ``object.__setattr__`` by name, 1.7 us a trade against 0.9 (the
# same object: same class, same fields; tests/test_trade_check_fast_path.py holds the two equal).
_SET_FIELDS = tuple(Trade.__dict__[name].__set__ for name in Trade.__slots__)
if tuple(Trade.__slots__) != tuple(Trade.__dataclass_fields__):  # a field added to Trade must be set here too
    raise RuntimeError("Trade's slots are not its fields")
_new_object = object.__new__


def new_trade(timestamp_ms: int, trade_id: int, price: Decimal, amount: Decimal, side: Side | None) -> Trade:
    """``Trade(timestamp_ms, trade_id, price, amount, side)``, built at half the cost (per trade)."""
    set_timestamp, set_id, set_price, set_amount, set_side = _SET_FIELDS
    trade: Trade = _new_object(Trade)
    set_timestamp(trade, timestamp_ms)
    set_id(trade, trade_id)
    set_price(trade, price)
    set_amount(trade, amount)
    set_side(trade, side)
    return trade


def check_trade(timestamp: object, trade_id: object, price: object, amount: object, side: object) -> Trade | Refusal:
    """An exact Trade from raw fields, or the Refusal of the first bad field (id first, then time)."""
    # What ccxt gives on every trade, read in one go: an int time in range, an id of at most 20
    # ASCII digits, a side of buy, sell or None, price and amount of plain digits other than zero.
    # These are the cases of ``_integer``'s and ``_decimal``'s own fast paths, so the answer is the
    # one the reading below gives (property-tested); anything else, or a value the bounds refuse,
    # takes that reading. Five calls fewer on every trade.
    if (
        type(timestamp) is int
        and MIN_TIMESTAMP_MS <= timestamp < MAX_TIMESTAMP_MS
        and type(trade_id) is str
        and len(trade_id) <= 20
        and trade_id.isascii()
        and trade_id.isdigit()
        and (side is None or (type(side) is str and (side == "buy" or side == "sell")))
        and type(price) is str
        and type(amount) is str
        and _PLAIN_DECIMAL.fullmatch(price) is not None
        and _PLAIN_DECIMAL.fullmatch(amount) is not None
    ):
        plain_id = int(trade_id)
        plain_price = Decimal(price)
        plain_amount = Decimal(amount)
        if plain_id <= MAX_TRADE_ID and plain_price and plain_amount:
            taker: Side | None = None if side is None else "buy" if side == "buy" else "sell"
            return new_trade(timestamp, plain_id, plain_price, plain_amount, taker)
    tid: int | None = None
    timestamp_ms: int | None = None
    reason: Reason = "id"
    try:
        tid = _integer(trade_id)
        if not 0 <= tid <= MAX_TRADE_ID:
            tid = None
            raise _Bad("out_of_range", f"{trade_id!r} is outside [0, 2**63)")
        reason = "timestamp"
        timestamp_ms = _integer(timestamp)
        if not MIN_TIMESTAMP_MS <= timestamp_ms < MAX_TIMESTAMP_MS:
            timestamp_ms = None
            raise _Bad("out_of_range", f"{timestamp!r} is not milliseconds between 2009 and 2100")
        reason = "side"
        taker = _side(side)
        reason = "price"
        exact_price = _decimal(price)
        reason = "amount"
        exact_amount = _decimal(amount)
    except _Bad as bad:
        if reason == "id":
            # An unusable id says nothing about the rest, but a usable time still places the record.
            try:
                timestamp_ms = _integer(timestamp)
            except _Bad:
                timestamp_ms = None
            if timestamp_ms is not None and not MIN_TIMESTAMP_MS <= timestamp_ms < MAX_TIMESTAMP_MS:
                timestamp_ms = None
        return Refusal(reason, bad.problem, bad.detail, tid, timestamp_ms)
    return new_trade(timestamp_ms, tid, exact_price, exact_amount, taker)


def unreadable(timestamp: object, trade_id: object, price: object, amount: object, side: object) -> Refusal | None:
    """The first field that is missing or not even a number (an integer, for id and time), or a side
    that is not buy, sell or empty; None if every field reads, whatever its value."""
    fields: tuple[tuple[Reason, object, Callable[[object], object]], ...] = (
        ("id", trade_id, _integer),
        ("timestamp", timestamp, _integer),
        ("side", side, _side),
        ("price", price, _read_decimal),
        ("amount", amount, _read_decimal),
    )
    for reason, value, read in fields:
        try:
            read(value)
        except _Bad as bad:
            return Refusal(reason, bad.problem, bad.detail)
    return None


def ahead_of_clock(trade_id: int, timestamp_ms: int, exchange_now_ms: int) -> Refusal | None:
    """A Refusal if a trade is stamped more than ``MAX_AHEAD_MS`` past the exchange's clock.

    Only the live feed knows a clock. A trade from the future would make the feed close every
    bar up to it (a year ahead is millions of empty bars): it is refused, not waited for. The
    refusal keeps the id, not the time: where ids are consecutive the trade is then placed
    between its neighbours.
    """
    if timestamp_ms <= exchange_now_ms + MAX_AHEAD_MS:
        return None
    ahead_s = (timestamp_ms - exchange_now_ms) / 1000
    return Refusal("timestamp", "out_of_range", f"{timestamp_ms} is {ahead_s:.0f}s past the exchange's clock", trade_id)


def placed(refusal: Refusal) -> RefusedTrade | None:
    """The refused record as a trade of known id and time, if both are usable."""
    if refusal.trade_id is None or refusal.timestamp_ms is None:
        return None
    return RefusedTrade(refusal.trade_id, refusal.timestamp_ms, refusal)
