"""Binance's trade frames read straight into the streamer's records, without ccxt's parse of them.

ccxt's binance client spends most of a websocket trade's CPU on work nobody here reads: for each
frame it looks up a dozen wrappers and keys, builds a unified trade (an ISO-8601 date string, a
``Precise`` cost, floats of price and amount, fee dicts) and appends it to its buffer, which our
hook (source.py) then reads back to the exchange's own strings (benchmarks/ingest_path.py: ccxt's
part 37-47 us a trade on a loaded 2-core machine, the streamer's ~16). ``BinanceTradeFrames.take``
handles the frames whose every field has the form the live stream sends (``{"e":"trade",...}``
or ``aggTrade``, nothing else in it) for a symbol whose buffer is ours, and gives the hook the
record ``trade_from_ccxt`` would have made of ccxt's trade: the same fields read from the same
JSON parse (ccxt reads frames with orjson too), the same check. Every other frame goes to ccxt as
before: a field missing or of another type, a key more or less, a refused value (so every
refusal and every bad frame is still ccxt's and the trade check's, counted as before), a symbol
nobody hooked. ccxt still owns the connection, subscriptions, pings and reconnects. Its
``watch_trades`` future (``trade::<symbol>``) is left pending: the feed's watch loop (feed.py
``_watch``) reads nothing from it and needs it only to hear of a lost connection (ccxt rejects every
pending future then). Resolved on every frame, it woke that loop for one more ``watch_trades``
call per frame: at a few trades a second per symbol that wake-up cost more than the trade.

tests/test_binance_frames.py replays the test trade files and hand-made frames through both paths
and requires the same records, refusals and bad frames, and the fast path taking the plain ones.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import WSMsgType

from streamer.source import HookedTradeCache, OnChecked
from streamer.trade_validation import MAX_TIMESTAMP_MS, MAX_TRADE_ID, MIN_TIMESTAMP_MS, new_trade, plain_decimal

_TEXT = WSMsgType.TEXT
# The keys of Binance spot's trade and aggregate-trade frames (``b`` and ``a`` of a trade frame are
# its buyer's and seller's order ids, which older frames carry). A frame with any
# other key (``x``: an execution report; ``symbol``, ``quantity``, ``time``: keys ccxt's parse
# prefers or falls back to; ``stream``, ``data``, ``id``, ``status``, ``error``: wrappers and
# answers) is left to ccxt.
_TRADE_KEYS = frozenset(("e", "E", "s", "t", "p", "q", "b", "a", "T", "m", "M"))
_AGG_TRADE_KEYS = frozenset(("e", "E", "s", "a", "p", "q", "f", "l", "T", "m", "M"))
# Exchanges whose ccxt class reads frames with binance's handler (ccxt.pro.binance and its
# subclasses of the same spot stream).
EXCHANGES = frozenset(("binance", "binanceus"))


class BinanceTradeFrames:
    """Takes the plain trade frames of hooked spot symbols off ccxt's path (see the module's doc).

    ``taken`` and ``passed`` count the frames taken here and those left to ccxt.
    """

    def __init__(self, exchange: Any) -> None:
        self._exchange = exchange
        # (market id, on a spot url) -> the unified symbol ccxt resolves it to (None: not a listed
        # spot market); resolved again once the markets are read again.
        self._symbols: dict[tuple[str, bool], str | None] = {}
        self._markets_by_id: Any = None
        self.taken = 0
        self.passed = 0

    def take(self, client: Any, message: Any) -> bool:
        """Hand a plain trade frame's record to its symbol's hook; False (nothing done) for any
        other frame: ccxt's handler must take it."""
        if message.type is not _TEXT:
            return False
        data = message.data
        # Trade frames start so; pongs, subscription answers and most bad frames stop here.
        if type(data) is not str or not data.startswith('{"e":"'):
            return False
        try:
            frame = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.passed += 1
            return False  # ccxt's parse fails the same way: a bad frame, counted there
        hooked = self._hooked(client, frame)
        if hooked is None:
            self.passed += 1
            return False
        on_checked = hooked
        # What ccxt's binance parse_trade reads, where it reads it: the id from t (from a in an
        # aggregate trade, whose frame has no t), the time from T, the taker side from m (the
        # buyer is the maker: a sell); the hook's trade_from_ccxt reads p and q off the frame.
        trade_id = frame["t"] if frame["e"] == "trade" else frame.get("a")
        timestamp = frame.get("T")
        maker = frame.get("m")
        price = plain_decimal(frame.get("p"))
        amount = plain_decimal(frame.get("q"))
        if (
            type(trade_id) is not int
            or not 0 <= trade_id <= MAX_TRADE_ID
            or type(timestamp) is not int
            or not MIN_TIMESTAMP_MS <= timestamp < MAX_TIMESTAMP_MS
            or type(maker) is not bool
            or price is None
            or amount is None
        ):
            self.passed += 1
            return False  # ccxt's trade and the full check, as before: a refusal keeps its words
        client.last_message_at = time.time_ns() // 1_000_000  # as ccxt's Client.handle_message
        on_checked(new_trade(timestamp, trade_id, price, amount, "sell" if maker else "buy"))
        self.taken += 1
        return True

    def _hooked(self, client: Any, frame: Any) -> OnChecked | None:
        """The hook of the frame's symbol (the receiver of its checked trades) if the
        frame has a trade frame's keys and no other, names a spot market the client's stream
        carries, and ccxt would not log it."""
        if type(frame) is not dict:
            return None
        event = frame.get("e")
        if event == "trade":
            if "t" not in frame or not frame.keys() <= _TRADE_KEYS:
                return None
        elif event == "aggTrade":
            if not frame.keys() <= _AGG_TRADE_KEYS:
                return None
        else:
            return None
        market_id = frame.get("s")
        if type(market_id) is not str or client.verbose:
            return None
        exchange = self._exchange
        if exchange.markets_by_id is not self._markets_by_id:  # the markets were read again
            self._symbols.clear()
            self._markets_by_id = exchange.markets_by_id
        key = (market_id, bool(exchange.is_spot_url(client)))
        if key in self._symbols:
            symbol = self._symbols[key]
        else:
            symbol = self._symbols[key] = self._resolve(*key)
        if symbol is None:
            return None
        cache = exchange.trades.get(symbol)
        if type(cache) is not HookedTradeCache or cache.on_checked is None:
            return None
        return cache.on_checked

    def _resolve(self, market_id: str, spot_url: bool) -> str | None:
        """ccxt's own resolution of the frame's market (binance's handle_trade), if it is a listed
        spot market: only those are parsed as spot trades, without a contract's extras."""
        exchange = self._exchange
        market = exchange.safe_market(market_id, None, None, "spot" if spot_url else "contract")
        symbol = market.get("symbol")
        if not isinstance(symbol, str) or market.get("spot") is not True or market.get("id") != market_id:
            return None
        listed = (exchange.markets or {}).get(symbol)  # not a market ccxt made up for an unknown id
        return symbol if listed is not None and listed.get("id") == market_id else None


def trade_frames_for(exchange: Any) -> BinanceTradeFrames | None:
    """The fast path of ``exchange``'s trade frames, if it has one (Binance's spot streams)."""
    import ccxt.pro

    if getattr(exchange, "id", None) in EXCHANGES and isinstance(exchange, ccxt.pro.binance):
        return BinanceTradeFrames(exchange)
    return None
