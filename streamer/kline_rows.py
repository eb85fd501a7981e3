"""Candles (REST klines) as bars and back: Binance's kline layout, the one place that knows it.

Binance (spot and futures) sends a candle as a list::

    [open_ms, "open", "high", "low", "close", "volume", close_ms, "quote volume", trades,
     "taker buy base volume", "taker buy quote volume", "0"]

Prices and volumes are decimal strings, so a bar made from them is exact. ccxt's ``fetch_ohlcv``
keeps only the first six (as floats); the history loader reads the raw row ccxt parsed
(streamer/history_client.py) and takes quote volume, trade count and taker buy volume from it
where they are present. Sell volume is volume minus taker buy volume (Binance gives every trade a
taker side). A candle without them (another exchange's layout, or the simulator's bar files,
which have OHLCV only) gives a bar that lacks them (volcast/bar.py ``HISTORY_MAY_LACK``), except
when its volume is zero: no trade means zero of each, at a VWAP of the close.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

from volcast.bar import EXACT, Bar, BarStatus, format_decimal

_ZERO = Decimal(0)
BINANCE_FIELDS = 12


class CandleError(ValueError):
    """A candle with a value that cannot be real (not a number, not finite, negative, a price <= 0)."""


def _decimal(value: object, name: str, *, positive: bool = False) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise CandleError(f"{name} {value!r} is not a number")
    try:
        # A float comes from ccxt's parsed candle: its shortest repr is what the exchange sent.
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        raise CandleError(f"{name} {value!r} is not a number") from None
    if not number.is_finite() or number < 0 or (positive and number == 0):
        raise CandleError(f"{name} {value!r} cannot be real")
    return number


def _optional(raw: Sequence[object], index: int, name: str) -> Decimal | None:
    if len(raw) <= index or raw[index] is None or raw[index] == "":
        return None
    return _decimal(raw[index], name)


def _count(raw: Sequence[object], index: int) -> int | None:
    if len(raw) <= index or raw[index] is None or raw[index] == "":
        return None
    value = raw[index]
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise CandleError(f"trade count {value!r} is not an integer")
    try:
        count = int(value)
    except ValueError:
        raise CandleError(f"trade count {value!r} is not an integer") from None
    if count < 0:
        raise CandleError(f"trade count {value!r} cannot be real")
    return count


def is_binance_row(raw: object) -> bool:
    """Binance's list layout (at least the six OHLCV fields, with the open time first)."""
    return isinstance(raw, (list, tuple)) and len(raw) >= 6 and isinstance(raw[0], int) and not isinstance(
        raw[0], bool
    )


def bar_from_candle(raw: object, parsed: Sequence[object], status: BarStatus = BarStatus.HISTORY) -> Bar:
    """A bar from one candle: its raw row where it has Binance's layout, else ccxt's parsed OHLCV.

    Raises CandleError for a value that cannot be real.
    """
    row: Sequence[object] = raw if is_binance_row(raw) else parsed  # type: ignore[assignment]
    if len(row) < 6 or not isinstance(row[0], int):
        raise CandleError(f"not a candle: {raw!r}")
    open_, high, low, close = (_decimal(row[i], n, positive=True) for i, n in
                               ((1, "open"), (2, "high"), (3, "low"), (4, "close")))
    volume = _decimal(row[5], "volume")
    binance = row is raw
    quote = _optional(row, 7, "quote volume") if binance else None
    trades = _count(row, 8) if binance else None
    buy = _optional(row, 9, "taker buy volume") if binance else None
    if not volume:  # nothing traded: every sum is zero whatever the candle says
        quote, trades, buy = _ZERO, 0, _ZERO
    sell = EXACT.subtract(volume, buy) if buy is not None else None
    if sell is not None and sell < 0:
        raise CandleError(f"taker buy volume {buy} above the volume {volume}")
    # No volume: no trade, and the aggregator's VWAP of an empty bar is its close.
    vwap = (quote / volume if quote is not None else None) if volume else close
    return Bar(
        open_time_ms=row[0],
        open=open_,
        high=high,
        low=low,
        close=close,
        volume=volume,
        quote_volume=quote,
        trades=trades,
        buy_volume=buy,
        sell_volume=sell,
        vwap=vwap,
        first_trade_id=None,
        last_trade_id=None,
        status=status,
    )


def _text(value: Decimal | None) -> str | None:
    return None if value is None else format_decimal(value)


def binance_row(bar: Bar, interval_ms: int, taker_buy_quote: Decimal | None) -> list[object]:
    """The Binance kline of ``bar``; a field the bar lacks goes out as ``null``."""
    return [
        bar.open_time_ms,
        format_decimal(bar.open),
        format_decimal(bar.high),
        format_decimal(bar.low),
        format_decimal(bar.close),
        format_decimal(bar.volume),
        bar.open_time_ms + interval_ms - 1,
        _text(bar.quote_volume),
        bar.trades,
        _text(bar.buy_volume),
        _text(taker_buy_quote),
        "0",
    ]
