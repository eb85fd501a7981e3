"""1-minute candles over ccxt's ``fetch_ohlcv``, with the exchange's raw rows and its rate limits.

``fetch_ohlcv`` pages Binance's ``GET /api/v3/klines`` (``startTime``, ``endTime`` from ccxt's
``until``, ``limit`` up to 1000; weight 2) and keeps six fields as floats. The raw row of each
candle, with its exact decimal strings, trade count and taker buy volume, is what ccxt's
``parse_ohlcv`` was given: this client wraps that method on its own ccxt instance and collects the
rows of the request the current task made (a ContextVar, so feeds loading at once do not mix
their rows). It also wraps ``on_rest_response``, which ccxt calls with every answer's status and
headers, to feed the weight budget (request_budget.py).

Failures: a 429/418 pauses every request until ``Retry-After`` (a ban longer than
``MAX_BAN_WAIT_S`` gives the history up); network errors are retried ``ATTEMPTS`` times with
backoff; anything else (the exchange refuses the symbol or the request) ends the load.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ccxt.pro

from streamer.request_budget import DEFAULT_RETRY_AFTER_S, WeightBudget, rate_limits
from volcast.backoff import Backoff

log = logging.getLogger(__name__)

MINUTE_MS = 60_000
PAGE = 1_000  # Binance's largest klines page
ATTEMPTS = 4  # network errors in a row before a load is given up (history is best effort)
MAX_BAN_WAIT_S = 600.0
# Request weight of one klines page (Binance spot: 2 whatever the limit); other exchanges: 1.
KLINES_WEIGHT = {"binance": 2, "binanceus": 2}

_rows: contextvars.ContextVar[list[tuple[Any, list[Any]]] | None] = contextvars.ContextVar(
    "volcast_candle_rows", default=None
)


class HistoryUnavailable(Exception):  # noqa: N818 - a state of the exchange, reported as such
    """The exchange cannot give this history (refused, unreachable, or banning us for long)."""


@dataclass(frozen=True, slots=True)
class RawCandle:
    raw: Any  # the exchange's row as ccxt was given it
    parsed: list[Any]  # ccxt's [open_ms, open, high, low, close, volume]


class CandleClient:
    """One ccxt client's 1-minute candles for any of its symbols (the client is the caller's)."""

    def __init__(self, exchange: Any, budget: WeightBudget) -> None:
        self.exchange = exchange
        self.budget = budget
        self.requests = 0
        self.weight = KLINES_WEIGHT.get(exchange.id, 1)
        parse = exchange.parse_ohlcv

        def parse_ohlcv(ohlcv: Any, market: Any = None) -> list[Any]:
            parsed: list[Any] = parse(ohlcv, market)
            sink = _rows.get()
            if sink is not None:
                sink.append((ohlcv, parsed))
            return parsed

        on_response = exchange.on_rest_response

        def on_rest_response(code: int, reason: str, url: str, method: str, headers: Any, body: Any,
                             *rest: Any) -> Any:
            budget.observe(int(code or 0), dict(headers or {}))
            return on_response(code, reason, url, method, headers, body, *rest)

        exchange.parse_ohlcv = parse_ohlcv
        exchange.on_rest_response = on_rest_response

    @property
    def supported(self) -> bool:
        return bool(self.exchange.has.get("fetchOHLCV"))

    async def learn_limits(self) -> None:
        """Binance lists its request-weight limits in exchangeInfo: size the budget from them."""
        get_info = getattr(self.exchange, "publicGetExchangeInfo", None)
        if get_info is None or self.budget.limits:
            return
        try:
            info = await get_info()
        except ccxt.BaseError as exc:
            log.warning("%s: request-weight limits unknown (%r); relying on ccxt's throttle", self.exchange.id, exc)
            return
        self.budget.set_limits(rate_limits(info if isinstance(info, dict) else {}))

    async def now_ms(self) -> int:
        """The exchange's clock (ours where it has none to ask)."""
        if self.exchange.has.get("fetchTime"):
            await self.budget.spend(1)
            server = await self.exchange.fetch_time()
            if server is not None:
                return int(server)
        return int(self.exchange.milliseconds())

    async def page(self, symbol: str, start_ms: int, end_ms: int) -> list[RawCandle]:
        """The 1-minute candles opening in [start_ms, end_ms), first ``PAGE`` of them, oldest first."""
        backoff = Backoff(0.5, 10.0)
        failures = 0
        while True:
            await self.budget.spend(self.weight)
            sink: list[tuple[Any, list[Any]]] = []
            token = _rows.set(sink)
            try:
                self.requests += 1
                parsed = await self.exchange.fetch_ohlcv(
                    symbol, "1m", since=start_ms, limit=PAGE, params={"until": end_ms - 1}
                )
            except ccxt.DDoSProtection as exc:  # 429 or 418 (RateLimitExceeded is one too)
                wait = self.budget.pause_left_s()
                if wait <= 0:  # refused without a Retry-After we saw: wait a window out anyway
                    self.budget.pause(DEFAULT_RETRY_AFTER_S)
                    wait = DEFAULT_RETRY_AFTER_S
                if wait > MAX_BAN_WAIT_S:
                    raise HistoryUnavailable(f"the exchange refuses requests for {wait:.0f} s more ({exc})") from None
                log.warning("%s: rate limited (%s); waiting %.1f s", symbol, type(exc).__name__, wait)
                continue  # spend() waits out the Retry-After
            except ccxt.NetworkError as exc:
                failures += 1
                if failures >= ATTEMPTS:
                    raise HistoryUnavailable(f"{failures} failed requests, the last: {exc!r}") from None
                delay = backoff.next_delay()
                log.warning("%s: candles request failed (%r); retry in %.1f s", symbol, exc, delay)
                await asyncio.sleep(delay)
                continue
            except ccxt.BaseError as exc:
                raise HistoryUnavailable(f"{type(exc).__name__}: {exc}") from None
            finally:
                _rows.reset(token)
            kept = {int(p[0]) for p in parsed if p and isinstance(p[0], (int, float))}
            out = [RawCandle(raw, list(p)) for raw, p in sink if p and p[0] in kept and start_ms <= p[0] < end_ms]
            out.sort(key=lambda c: int(c.parsed[0]))
            return _unique(out)


def _unique(candles: Sequence[RawCandle]) -> list[RawCandle]:
    out: list[RawCandle] = []
    for candle in candles:
        if out and out[-1].parsed[0] == candle.parsed[0]:
            out[-1] = candle  # the exchange sent a minute twice: the later row
        else:
            out.append(candle)
    return out
