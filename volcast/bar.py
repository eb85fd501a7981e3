"""The trade and bar records both sides share, and their exact text form.

Amounts and prices are ``Decimal`` so that a bar's volume is the exact sum of its trades'
amounts: summing binary floats would make the same trades give different volumes in different
orders. Redis, CSV and JSON carry them as decimal strings. Sums are made in ``EXACT``: Python's
default context keeps 28 digits and would round a sum of long amounts; the bounds that
streamer/trade_validation.py puts on a trade (below 10**20, no digit below 10**-30) keep every
bar sum within its precision.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from decimal import Context, Decimal, DivisionByZero, InvalidOperation, Overflow
from enum import StrEnum
from typing import Literal

from volcast.redis_text import text_fields

Side = Literal["buy", "sell"]

EXACT = Context(prec=150, Emax=999_999, Emin=-999_999, traps=[InvalidOperation, DivisionByZero, Overflow])
"""Where bar sums are made: 150 digits hold any sum of trades within the validated bounds."""


class BarStatus(StrEnum):
    """What a closed bar can promise about its trades."""

    COMPLETE = "complete"  # every trade of the interval came from the live feed
    BACKFILLED = "backfilled"  # complete, but some trades came from a REST backfill
    # Trades of the interval are known to be missing: lost in a hole no backfill could fill, or
    # refused because the exchange's record of them holds a value that cannot be real (NaN,
    # Infinity, a negative or zero amount or price, ...). Such a trade happened, so a bar without
    # it is short; it is kept out of the sums and its bar says so.
    GAP = "gap"
    # Not built from trades: a bar of the exchange's own candles (REST klines), loaded once when a
    # feed starts without history (streamer/history.py) and only for times before its first
    # trade-built bar. Never ``complete``: nobody here counted its trades, and the exchange's
    # candle may lack fields (``HISTORY_MAY_LACK``). A bar built from trades always wins: history
    # is written only before the feed's live resume point.
    HISTORY = "history"


HISTORY_MAY_LACK: tuple[str, ...] = ("quote_volume", "trades", "buy_volume", "sell_volume", "vwap")
"""Fields a ``history`` bar leaves empty (None; ``""`` in Redis and CSV) when the exchange's candle does
not carry them. Binance klines carry all of them (quote volume, trade count, taker buy volume);
candles with OHLCV only (other exchanges, the simulator's bar files) carry none, except on a bar
of zero volume, where no trade means zero of each and a VWAP at the close. ``first_trade_id`` and
``last_trade_id`` are always empty on a history bar: candles do not name trades."""


@dataclass(frozen=True, slots=True)
class Trade:
    """One exchange trade. ``side`` is the taker (aggressor) side, None if the exchange hides it."""

    timestamp_ms: int
    trade_id: int
    price: Decimal
    amount: Decimal
    side: Side | None


@dataclass(frozen=True, slots=True)
class Bar:
    """A closed (or forming) time bar. ``open_time_ms`` is the UTC start of its interval.

    Bars built from trades have every field but the trade ids of an empty bar; only a ``history``
    bar can lack the fields of ``HISTORY_MAY_LACK`` (None).
    """

    open_time_ms: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    quote_volume: Decimal | None
    trades: int | None
    buy_volume: Decimal | None
    sell_volume: Decimal | None
    vwap: Decimal | None
    first_trade_id: int | None
    last_trade_id: int | None
    status: BarStatus

    def to_fields(self) -> dict[str, str]:
        """Flat string fields, for a Redis hash or stream entry and for CSV."""
        out: dict[str, str] = {}
        for name in BAR_FIELDS:
            value = getattr(self, name)
            if isinstance(value, BarStatus):
                out[name] = value.value
            elif value is None:
                out[name] = ""
            elif isinstance(value, Decimal):
                out[name] = format_decimal(value)
            else:
                out[name] = str(value)
        return out

    @classmethod
    def from_fields(cls, raw: Mapping[str, str] | Mapping[bytes, bytes] | Mapping[str | bytes, str | bytes]) -> Bar:
        """Inverse of ``to_fields``; accepts the bytes a Redis client without decoding returns.
        (Mapping's key type is invariant: a ``dict[str, str]`` or ``dict[bytes, bytes]`` is not a
        ``Mapping[str | bytes, ...]``, so each is named.)"""
        text = text_fields(raw)
        try:
            bar = cls(
                open_time_ms=int(text["open_time_ms"]),
                open=Decimal(text["open"]),
                high=Decimal(text["high"]),
                low=Decimal(text["low"]),
                close=Decimal(text["close"]),
                volume=Decimal(text["volume"]),
                quote_volume=_optional_decimal(text["quote_volume"]),
                trades=int(text["trades"]) if text["trades"] else None,
                buy_volume=_optional_decimal(text["buy_volume"]),
                sell_volume=_optional_decimal(text["sell_volume"]),
                vwap=_optional_decimal(text["vwap"]),
                first_trade_id=int(text["first_trade_id"]) if text["first_trade_id"] else None,
                last_trade_id=int(text["last_trade_id"]) if text["last_trade_id"] else None,
                status=BarStatus(text["status"]),
            )
        except (KeyError, ValueError, ArithmeticError) as exc:
            raise ValueError(f"not a bar record: {exc!r} in {text!r}") from None
        if bar.status is not BarStatus.HISTORY and any(getattr(bar, name) is None for name in HISTORY_MAY_LACK):
            raise ValueError(f"not a bar record: a {bar.status.value} bar without {', '.join(HISTORY_MAY_LACK)}")
        return bar


BAR_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Bar))
"""Field order of a bar everywhere it is written out (CSV columns, Redis fields)."""

EVENT_BAR_FIELDS: tuple[str, ...] = ("open", "high", "low", "close", "volume", "trades", "buy_volume")
"""The bar's values its bar-closed event carries, as the very strings written to the bar
(``to_fields``), so that a forecaster need not read back the bar it was just told about: the
columns the forecaster keeps of each bar (forecaster/bar_matrix.py ``COLUMNS`` is this tuple).
Only the event of a bar's first write carries them: a revision's, a restored bar's or a recovered
event does not, and the forecaster then reads the bar from Redis."""


def _optional_decimal(text: str) -> Decimal | None:
    return Decimal(text) if text else None


def format_decimal(value: Decimal) -> str:
    """Plain notation without exponent, trailing zeros kept only as far as needed: 1482.0 -> '1482'."""
    if value == 0:
        return "0"
    # normalize() rounds to its context's precision: the default 28 digits would cut a long sum.
    return format(value.normalize(EXACT), "f")
