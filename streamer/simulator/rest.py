"""Binance spot public REST endpoints, served from the trades published so far.

Endpoints (under ``/api/v3``): ``ping``, ``time`` (the replay clock), ``exchangeInfo``, and the
three trade lists ccxt's ``fetch_trades`` can call: ``aggTrades`` (its default for spot),
``trades`` and ``historicalTrades`` (``params={"fetchTradesMethod": ...}``; for this one ccxt insists on an
``apiKey``, any text will do: the key is not checked).

Semantics follow Binance: ``limit`` defaults to 500 and must be 1..1000; ``fromId`` is
inclusive; ``startTime``/``endTime`` are inclusive and at most one hour apart; ``fromId`` with a
time window is rejected (-1128: ccxt's ``fetch_trades(since=..., params={"fromId": ...})``
sends both, so it fails as on Binance). With no selector the most recent trades come back.
A time window returns the first ``limit`` trades from ``startTime`` (oldest first, as
everything here); ``endTime`` alone returns the last ``limit`` up to it.
Errors are Binance's ``{"code": -11xx, "msg": ...}`` with HTTP 400.

``klines``: candles of the tape and of the bar files before it (klines.py). Request weight:
every request is weighed (weights.py), the used weight comes back in ``X-MBX-USED-WEIGHT-1M``,
and past the limit (exchangeInfo's ``rateLimits``) the answer is 429, then 418.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from http import HTTPStatus

from aiohttp import web

from streamer.simulator.faults import FaultSpec
from streamer.simulator.frames import LiveTrade, agg_trade_entry, raw_trade_entry
from streamer.simulator.klines import INTERVALS, KlineBook
from streamer.simulator.published import PublishedTrades
from streamer.simulator.tape import Tape
from streamer.simulator.weights import ENDPOINT_WEIGHTS, RequestWeights

MAX_LIMIT = 1000
DEFAULT_LIMIT = 500
MAX_WINDOW_MS = 3_600_000


class BinanceError(Exception):
    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.status = status


def _step(values: list[str]) -> str:
    """The tick a column of decimal strings is quoted in: the most decimals any of them has, at
    most 8 as on Binance (some recorded amounts carry float noise like 0.014596000000000001)."""
    decimals = min(8, max((len(v.partition(".")[2].rstrip("0")) for v in values), default=0))
    return format(Decimal(1).scaleb(-decimals), ".8f")


def symbol_info(tape: Tape) -> dict[str, object]:
    """An ``exchangeInfo`` symbol entry with the fields ccxt's ``parse_market`` reads."""
    base, quote = tape.symbol.split("/")
    sample = tape.trades[:5000]
    tick = _step([t.price for t in sample])
    step = _step([t.amount for t in sample])
    return {
        "symbol": tape.market_id,
        "status": "TRADING",
        "baseAsset": base,
        "baseAssetPrecision": 8,
        "quoteAsset": quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": tick, "maxPrice": "1000000.00000000", "tickSize": tick},
            {"filterType": "LOT_SIZE", "minQty": step, "maxQty": "9000000.00000000", "stepSize": step},
        ],
        "permissions": ["SPOT"],
        "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "NONE",
        "allowedSelfTradePreventionModes": ["NONE"],
    }


def _int_param(query: Mapping[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise BinanceError(
            -1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'."
        ) from None


class BinanceRest:
    def __init__(
        self,
        tapes: list[Tape],
        stores: Mapping[str, PublishedTrades],
        clock_ms: Callable[[], int],
        faults: FaultSpec,
        seed: int,
        *,
        klines: Mapping[str, KlineBook] | None = None,
        weights: RequestWeights | None = None,
    ) -> None:
        self._symbols = [symbol_info(t) for t in tapes]
        self._klines = klines or {}
        self.weights = weights or RequestWeights()
        self.kline_requests = 0
        self._stores = stores
        self.delisted: set[str] = set()  # market ids gone from exchangeInfo; their trades answer -1121
        self._clock_ms = clock_ms
        self._faults = faults
        self._rng = random.Random(seed)
        self.requests = 0
        self.injected_errors = 0

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v3/ping", self._ping)
        app.router.add_get("/api/v3/time", self._time)
        app.router.add_get("/api/v3/exchangeInfo", self._exchange_info)
        app.router.add_get("/api/v3/aggTrades", self._agg_trades)
        app.router.add_get("/api/v3/trades", self._trades)
        app.router.add_get("/api/v3/historicalTrades", self._historical_trades)
        app.router.add_get("/api/v3/klines", self._klines_handler)
        app.middlewares.append(self._weigh)

    @web.middleware
    async def _weigh(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Charge the request's weight; refuse it past the limit; say the weight used on every answer."""
        prefix = "/api/v3/"
        if not request.path.startswith(prefix):
            return await handler(request)
        weights = self.weights
        refused = weights.charge(ENDPOINT_WEIGHTS.get(request.path[len(prefix):], 1))
        if refused is not None:
            response: web.StreamResponse = web.json_response(
                {"code": refused.code, "msg": refused.msg}, status=refused.status,
                headers={"Retry-After": str(refused.retry_after_s)},
            )
        else:
            response = await handler(request)
        response.headers[weights.header] = str(weights.used)
        return response

    async def _ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _time(self, request: web.Request) -> web.Response:
        return web.json_response({"serverTime": self._clock_ms()})

    async def _exchange_info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "timezone": "UTC",
                "serverTime": self._clock_ms(),
                "rateLimits": [self.weights.rate_limit()],
                "exchangeFilters": [],
                "symbols": [s for s in self._symbols if s["symbol"] not in self.delisted],
            }
        )

    async def _klines_handler(self, request: web.Request) -> web.Response:
        self.kline_requests += 1
        if self._faults.klines_error_rate and self._rng.random() < self._faults.klines_error_rate:
            self.injected_errors += 1
            return self._injected_error()
        query = request.query
        try:
            book = self._book(query.get("symbol"))
            interval = INTERVALS.get(query.get("interval") or "")
            if interval is None:
                raise BinanceError(-1120, "Invalid interval.")
            limit = _int_param(query, "limit")
            limit = DEFAULT_LIMIT if limit is None else limit
            if not 1 <= limit <= MAX_LIMIT:
                raise BinanceError(-1130, f"Data sent for parameter 'limit' is not valid: must be 1..{MAX_LIMIT}.")
            start, end = _int_param(query, "startTime"), _int_param(query, "endTime")
            if start is not None and end is not None and start > end:
                raise BinanceError(-1023, "Start time is greater than end time.")
            rows = book.rows(interval, start, end, limit, self._clock_ms())
        except BinanceError as exc:
            return web.json_response({"code": exc.code, "msg": exc.msg}, status=exc.status)
        return web.json_response(rows)

    def _book(self, symbol: str | None) -> KlineBook:
        if not symbol:
            raise BinanceError(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        book = self._klines.get(symbol.upper())
        if book is None:
            raise BinanceError(-1121, "Invalid symbol.")
        return book

    async def _agg_trades(self, request: web.Request) -> web.Response:
        return await self._serve(request, self._select_agg, agg_trade_entry)

    async def _trades(self, request: web.Request) -> web.Response:
        return await self._serve(request, lambda store, q, limit: store.last(limit), raw_trade_entry)

    async def _historical_trades(self, request: web.Request) -> web.Response:
        def select(store: PublishedTrades, query: Mapping[str, str], limit: int) -> list[LiveTrade]:
            from_id = _int_param(query, "fromId")
            return store.last(limit) if from_id is None else store.from_id(from_id, limit)

        return await self._serve(request, select, raw_trade_entry)

    @staticmethod
    def _select_agg(store: PublishedTrades, query: Mapping[str, str], limit: int) -> list[LiveTrade]:
        from_id = _int_param(query, "fromId")
        start = _int_param(query, "startTime")
        end = _int_param(query, "endTime")
        if from_id is not None and (start is not None or end is not None):
            raise BinanceError(-1128, "Combination of optional parameters invalid.")
        if start is not None and end is not None and (end < start or end - start > MAX_WINDOW_MS):
            raise BinanceError(-1127, "More than 1 hours between startTime and endTime.")
        if from_id is not None:
            return store.from_id(from_id, limit)
        if start is not None or end is not None:
            return store.between(start, end, limit)
        return store.last(limit)

    async def _serve(
        self,
        request: web.Request,
        select: Callable[[PublishedTrades, Mapping[str, str], int], list[LiveTrade]],
        encode: Callable[[LiveTrade], dict[str, object]],
    ) -> web.Response:
        self.requests += 1
        if self._faults.rest_error_rate and self._rng.random() < self._faults.rest_error_rate:
            self.injected_errors += 1
            return self._injected_error()
        query = request.query
        try:
            symbol = query.get("symbol")
            if not symbol:
                raise BinanceError(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
            store = self._stores.get(symbol.upper())
            if store is None or symbol.upper() in self.delisted:
                raise BinanceError(-1121, "Invalid symbol.")
            limit = _int_param(query, "limit")
            if limit is None:
                limit = DEFAULT_LIMIT
            if not 1 <= limit <= MAX_LIMIT:
                raise BinanceError(-1130, f"Data sent for parameter 'limit' is not valid: must be 1..{MAX_LIMIT}.")
            trades = select(store, query, limit)
        except BinanceError as exc:
            return web.json_response({"code": exc.code, "msg": exc.msg}, status=exc.status)
        return web.json_response([encode(t) for t in trades])

    def _injected_error(self) -> web.Response:
        status = self._faults.rest_error_status
        if status == 429:
            return web.json_response(
                {
                    "code": -1003,
                    "msg": "Too much request weight used; current limit is 6000 request weight per 1 MINUTE.",
                },
                status=429,
                headers={"Retry-After": "1"},
            )
        # What a gateway in front of the API answers: no Binance code, so ccxt maps the status
        # (ExchangeNotAvailable), as for a real outage; Binance's own -1001 would map to
        # OperationFailed, which is not a NetworkError.
        return web.Response(status=status, text=f"{status} {HTTPStatus(status).phrase}")
