"""Binance spot wire formats of a trade: the websocket frame and the REST list entries.

Frames are built with bytes formatting rather than a JSON encoder: price and amount must go out
as the recorded strings, and this is the hot path of the flood (about 0.5 us per frame).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from streamer.simulator.faults import MalformedKind
from volcast.bar import format_decimal


@dataclass(frozen=True, slots=True)
class LiveTrade:
    """A trade as published: timestamp and id already shifted for this replay (and loop)."""

    timestamp_ms: int
    trade_id: int
    price: str
    amount: str
    buyer_maker: bool


def trade_frame(
    market_id: bytes, timestamp_ms: int, trade_id: int, price: str, amount: str, buyer_maker: bool
) -> bytes:
    """``{"e":"trade",...}`` exactly as Binance's ``<symbol>@trade`` stream sends it (E = T)."""
    return b'{"e":"trade","E":%d,"s":"%s","t":%d,"p":"%s","q":"%s","T":%d,"m":%s,"M":true}' % (
        timestamp_ms,
        market_id,
        trade_id,
        price.encode(),
        amount.encode(),
        timestamp_ms,
        b"true" if buyer_maker else b"false",
    )


def agg_trade_entry(trade: LiveTrade) -> dict[str, object]:
    """One entry of ``GET /api/v3/aggTrades``: one aggregate per trade, ``a`` = ``f`` = ``l`` = trade id,
    so that ccxt's id for a REST trade equals the websocket trade's id."""
    return {
        "a": trade.trade_id,
        "p": trade.price,
        "q": trade.amount,
        "f": trade.trade_id,
        "l": trade.trade_id,
        "T": trade.timestamp_ms,
        "m": trade.buyer_maker,
        "M": True,
    }


def raw_trade_entry(trade: LiveTrade) -> dict[str, object]:
    """One entry of ``GET /api/v3/trades`` and ``/api/v3/historicalTrades``."""
    return {
        "id": trade.trade_id,
        "price": trade.price,
        "qty": trade.amount,
        "quoteQty": _quote_quantity(trade.price, trade.amount),
        "time": trade.timestamp_ms,
        "isBuyerMaker": trade.buyer_maker,
        "isBestMatch": True,
    }


def _quote_quantity(price: str, amount: str) -> str:
    """price x amount as Binance's ``quoteQty``; "NaN" where a faulty row's values have no product
    (the tape replays such rows as written: an error here answered 500 for the whole page)."""
    try:
        return format_decimal(Decimal(price) * Decimal(amount))
    except ArithmeticError:
        return "NaN"


def malformed_frame(kind: MalformedKind, market_id: bytes, good_frame: bytes) -> bytes:
    """A broken frame of the given kind, shaped after the (good) trade frame it precedes."""
    if kind == "not_json":
        return b"garbage " + good_frame[:12]
    if kind == "truncated_json":
        return good_frame[:25]
    if kind == "missing_fields":
        return b'{"e":"trade","s":"%s"}' % market_id
    return b'{"e":"bogusEvent","s":"%s"}' % market_id
