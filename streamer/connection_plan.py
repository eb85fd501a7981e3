"""Which websocket connection carries which symbol: the busiest symbols of an exchange together.

Why it matters for latency: a pong proves a connection alive up to an exchange time, but on a
connection with a busy trade flow it proves no more than that flow's newest trade (the stalled-
stream guard, liveness.py). ccxt's binance client deals symbols round robin over 50 connections,
so a busy symbol shares its connection only with quiet ones, its flow is its own trades, and a
pong after its bar's end proves nothing its own next trade would not: the bar waits for that
trade (on a real BTC tape 3.7% of instants wait more than 300 ms). Symbols ranked by activity
and dealt out in runs of ``streamer.symbols_per_connection`` put busy symbols on the same
connections: their merged flow has a trade within a few ms of any instant, so a pong past the
bar's end plus grace closes a busy bar whose own next trade is late, and the stall guard keeps
its full strength (it judges the merged flow, which stops when the connection stops). Quiet
symbols share connections with quiet ones: no busy flow caps their pongs.

Activity is the mean trade count of each feed's last bars in Redis (history candles carry
Binance's trade count, so a new deployment with history is ranked from its first start); feeds
without bars rank last, in config order. The plan is made once at start; a symbol whose
activity changes later stays where it is until the next start.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from volcast.keys import Feed, RedisKeys
from volcast.redis_text import as_text

log = logging.getLogger(__name__)

# Bars per feed read to rank it: an hour of 1-minute bars (one XREVRANGE per feed, at start).
RANK_BARS = 60
# ccxt's binance client opens at most this many connections per market type (its ``streamLimits``).
_CCXT_CONNECTIONS = 50


def plan_connections(symbols: Sequence[str], activity: Mapping[str, float], per_connection: int) -> dict[str, int]:
    """Each symbol's connection number: symbols ranked by ``activity`` (busiest first; ties and
    unknown in ``symbols``' order), dealt out in runs of ``per_connection``, or more where that
    would need more connections than ccxt opens. Empty for ``per_connection`` 0 (ccxt decides)."""
    if per_connection <= 0 or not symbols:
        return {}
    per_connection = max(per_connection, math.ceil(len(symbols) / _CCXT_CONNECTIONS))
    ranked = sorted(symbols, key=lambda symbol: -activity.get(symbol, 0.0))  # stable: config order kept
    return {symbol: rank // per_connection for rank, symbol in enumerate(ranked)}


def place_symbol(exchange: Any, symbol: str, connection: int) -> bool:
    """Have ccxt carry ``symbol``'s trades on connection ``connection``; False where the exchange's
    client does not pick connections per subscription (then ccxt's own choice stands).

    ccxt's binance family keeps the connection of each subscription in
    ``options['streamBySubscriptionsHash']``, keyed by ``multipleTrades::<symbol>`` for
    ``watch_trades``, and fills it on a subscription's first use only: set before it, ours stands,
    for every reconnect too.
    """
    if not callable(getattr(exchange, "stream", None)):
        return False
    by_hash = exchange.options.setdefault("streamBySubscriptionsHash", {})
    by_hash[f"multipleTrades::{symbol}"] = str(connection)
    return True


async def trade_activity(redis: aioredis.Redis, keys: RedisKeys, feeds: Sequence[Feed]) -> dict[Feed, float]:
    """Each feed's mean trades per bar over its last ``RANK_BARS`` bars in Redis (feeds without bars,
    or whose bars do not count trades, are left out). Ranking is an optimisation: Redis errors
    leave the feed out, logged, and never hold the start back."""
    activity: dict[Feed, float] = {}
    for feed in feeds:
        try:
            entries = await redis.xrevrange(keys.bars(feed), count=RANK_BARS)
        except ResponseError:
            continue  # a key of another type: the feed itself reports it when it starts
        except RedisError as exc:
            log.warning("recent bars could not be read to place symbols on connections (%r): the %d "
                        "feeds not read yet rank as quiet", exc, len(feeds) - feeds.index(feed))
            break
        counts = [_trades(fields or {}) for _entry_id, fields in entries or []]
        known = [count for count in counts if count is not None]
        if known:
            activity[feed] = sum(known) / len(known)
    return activity


def _trades(fields: Mapping[Any, Any]) -> int | None:
    value = fields.get(b"trades", fields.get("trades"))
    if value is None:
        return None
    try:
        return int(as_text(value))
    except ValueError:
        return None
