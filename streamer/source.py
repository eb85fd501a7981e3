"""The exchange side of the streamer: a ccxt pro client per exchange, every parsed trade hooked.

ccxt keeps the trades it parses in a ring buffer (``options["tradesLimit"]``) and parses every
frame already on the socket before the ``watch_trades`` caller runs again, so a burst larger than
the buffer is silently dropped (findings.md: 47,802 of 100,000 seen). Instead of reading the
buffer, we put our own buffer class into ``exchange.trades[symbol]`` before subscribing: every
trade ccxt appends is handed to a callback at once, and the buffer itself keeps only a few rows
(memory stays flat with 100 symbols).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from ccxt.async_support.base.ws.cache import ArrayCache

from streamer.receive_pump import ReadHold, install_pump
from streamer.trade_validation import Refusal, check_trade
from volcast.bar import Trade
from volcast.settings import ExchangeSettings

log = logging.getLogger(__name__)

# A connection given up is closed with a handshake of at most this long.
_CLOSE_WAIT_S = 1.0
# ccxt's own buffer is not our record of trades; a handful of rows keeps watch_trades working.
_RING_ROWS = 16

# Raw decimal strings in the exchange's own message, by exchange field name: Binance websocket
# ('p', 'q'), Binance REST trades ('price', 'qty'), and the generic spellings.
_PRICE_KEYS = ("p", "price", "px")
_AMOUNT_KEYS = ("q", "qty", "amount", "size", "sz", "volume")


class TradeHookError(RuntimeError):
    """The exchange replaced our trade buffer, so trades could bypass the hook."""


# What a hook's owner is given for a trade once checked: the exact Trade, or why it is refused.
OnChecked = Callable[[Trade | Refusal], None]


class HookedTradeCache(ArrayCache):  # type: ignore[misc]
    """ccxt's trade buffer that also passes each appended trade to ``on_trade``.

    ``on_checked``, if given, takes the checked record of a trade that never became a ccxt trade:
    the trade frames read without ccxt's parse (binance_frames.py) go there, not into the buffer.
    """

    def __init__(
        self,
        on_trade: Callable[[dict[str, Any]], None],
        max_size: int = _RING_ROWS,
        on_checked: OnChecked | None = None,
    ) -> None:
        super().__init__(max_size)
        self._on_trade = on_trade
        self.on_checked = on_checked

    def append(self, item: dict[str, Any]) -> None:
        ArrayCache.append(self, item)  # not super(): its object costs on every trade
        self._on_trade(item)


def _raw_number(info: Mapping[str, Any], keys: tuple[str, ...], parsed: Any) -> Any:
    """The exchange's own text of a price or amount, else ccxt's parsed number (checked later)."""
    for key in keys:
        raw = info.get(key)
        if isinstance(raw, str) and raw:
            return raw
    return parsed


def trade_from_ccxt(raw: Mapping[str, Any]) -> Trade | Refusal:
    """A ccxt unified trade (websocket or REST) as an exact Trade, or the Refusal saying why not.

    Price and amount are read from the exchange's own message where it has them (exact decimal
    text), else from ccxt's float; everything then goes through ``check_trade``, the check every
    source of trades shares.
    """
    info = raw.get("info")
    if type(info) is dict:  # ccxt's own: the first keys of Binance's websocket, without the two calls
        price, amount = info.get("p"), info.get("q")
        if type(price) is str and price and type(amount) is str and amount:
            return check_trade(raw.get("timestamp"), raw.get("id"), price, amount, raw.get("side"))
    elif not isinstance(info, Mapping):
        info = {}
    return check_trade(
        raw.get("timestamp"),
        raw.get("id"),
        _raw_number(info, _PRICE_KEYS, raw.get("price")),
        _raw_number(info, _AMOUNT_KEYS, raw.get("amount")),
        raw.get("side"),
    )


def default_options(exchange_id: str) -> dict[str, Any]:
    """Options our use of an exchange needs, under the user's ``exchanges[].options``."""
    if exchange_id in {"binance", "binanceus"}:
        # Backfill must return the same ids as the '@trade' stream: raw trades, not the
        # aggregate trades that ccxt fetches by default. Websocket messages (subscriptions and our
        # pings) one per 500 ms per connection instead of ccxt's 250: Binance closes a connection
        # that sends more than 5 messages a second (pongs included), and one every 250 ms has
        # been seen closed.
        return {"fetchTradesMethod": "publicGetHistoricalTrades", "ws": {"cost": 10}}
    return {}


def api_key_variable(exchange_id: str) -> str:
    return f"VOLCAST_{exchange_id.upper()}_API_KEY"


def _api_key(exchange_id: str, env: Mapping[str, str]) -> str | None:
    name = api_key_variable(exchange_id)
    value = env.get(name)
    file_name = env.get(f"{name}_FILE")
    if value is None and file_name:
        with open(file_name, encoding="utf-8") as handle:  # noqa: PTH123 (a Docker secret path)
            value = handle.read().strip()
    return value or None


def create_exchange(settings: ExchangeSettings, env: Mapping[str, str] | None = None) -> Any:
    """A ccxt pro client with ``options`` and ``urls`` from config deep-merged over ccxt's own.

    Binance serves raw trades by id (``historicalTrades``, what backfill needs) only with an API
    key (a read-only key is enough); it is read from ``VOLCAST_<EXCHANGE>_API_KEY`` (or ``..._FILE``)
    so that it never sits in config.yml. Without it, backfill is refused and holes become gaps.
    """
    import ccxt.pro

    cls = getattr(ccxt.pro, settings.id)
    options = {**default_options(settings.id), **settings.options}
    config: dict[str, Any] = {"enableRateLimit": True, "options": options, "urls": settings.urls}
    key = _api_key(settings.id, os.environ if env is None else env)
    if key:
        config["apiKey"] = key
    return cls(config)


def install_hook(
    exchange: Any, symbol: str, on_trade: Callable[[dict[str, Any]], None], on_checked: OnChecked | None = None
) -> HookedTradeCache:
    cache = HookedTradeCache(on_trade, on_checked=on_checked)
    exchange.trades[symbol] = cache
    return cache


def check_hook(exchange: Any, symbol: str, cache: HookedTradeCache) -> None:
    if exchange.trades.get(symbol) is not cache:
        raise TradeHookError(
            f"{exchange.id} replaced the trade buffer of {symbol}; trades would bypass the streamer"
        )


async def drop_connection(exchange: Any, symbol: str, error: Exception) -> None:
    """Close the websocket carrying ``symbol`` so that the next ``watch_trades`` reconnects.

    ccxt notices a silent server only after about 3 keep-alives, and never one that answers pings
    but sends nothing; our watchdog calls this instead (as ccxt's own teardown paths do).
    """
    for url, client in list((exchange.clients or {}).items()):
        hashes = list(client.subscriptions) + list(client.futures)
        if not any(isinstance(h, str) and h.endswith(symbol) for h in hashes):
            continue
        if client.error is None:
            client.error = error  # on_close must not treat this as a server disconnect
        # Out of ccxt's clients first: the next watch_trades must dial anew even while this close
        # is still waiting (a dead server never answers the close handshake; aiohttp waits 10 s).
        if exchange.clients.get(url) is client:
            del exchange.clients[url]
        client.reset(error)
        try:
            # Cut short, aiohttp closes the socket itself: enough for a connection we give up.
            await asyncio.wait_for(client.close(), _CLOSE_WAIT_S)
        except Exception as exc:  # a half-dead socket may fail to close; it is dropped anyway
            log.debug("closing %s: %r", url, exc)


def client_symbols(client: Any) -> list[str]:
    """The symbols whose trades a ccxt websocket client carries (from its subscription hashes)."""
    hashes = list(getattr(client, "subscriptions", {}) or {}) + list(getattr(client, "futures", {}) or {})
    return [h.split("::", 1)[1] for h in hashes if isinstance(h, str) and "::" in h]


def subscription_sent(exchange: Any, symbol: str) -> bool:
    """A connected websocket of ``exchange`` carries ``symbol`` and has no message left to send.

    ccxt sends subscriptions through a per-connection throttle (Binance: one every 250 ms, so
    resubscribing 50 symbols takes 12 s): registered is not sent. An empty throttle queue (seen
    again a tick later by the caller, once ccxt's send task has queued) means it went out.
    """
    for client in list((exchange.clients or {}).values()):
        connected = getattr(client, "connected", None)
        if connected is None or not connected.done() or symbol not in client_symbols(client):
            continue
        if not sends_queued(client):
            return True
    return False


def sends_queued(client: Any) -> bool:
    """ccxt's throttle still holds messages (subscriptions) for this connection."""
    return bool(getattr(getattr(client, "throttle", None), "queue", None))


def guard_frames(
    exchange: Any,
    on_bad_frame: Callable[[Any, Exception], None],
    on_frame: Callable[[Any, Any], None] | None = None,
    on_send: Callable[[Any], None] | None = None,
    take_frame: Callable[[Any, Any], bool] | None = None,
    hold: ReadHold | None = None,
) -> None:
    """Make one bad frame cost one frame, not the connection; show every frame to ``on_frame``.

    ccxt handles each frame in a callback of its receive loop; a frame that is not JSON, or that
    its handler chokes on, raises out of that callback and the loop stops for good while the
    socket stays open (measured against the simulator's malformed frames: 9 of 2001 trades
    delivered). Every client this exchange creates gets its frame handler wrapped, so the error
    is reported and the loop goes on. ``on_frame(client, message)`` then sees the frame (pongs
    included: ccxt opens its connections without autoping), after ccxt has handled it, in the
    order the connection delivered them: the liveness proof (liveness.py) rests on that order.
    ``on_send(client)`` hears of every message ccxt sends (subscriptions), which count against
    the exchange's limit of incoming messages per connection. ``take_frame(client, message)``,
    if given, sees each frame first; True means it handled it in ccxt's place (binance_frames.py:
    a trade frame read without ccxt's parse), and ccxt's handler is skipped. An error in it is a
    bad frame, as one in ccxt's handler. Frames are read by one task per connection
    (receive_pump.py), not by ccxt's task-per-frame loop, resting ``hold`` between reads of a busy
    connection where it allows.
    """
    create_client = exchange.client

    def client(url: str) -> Any:
        instance = create_client(url)
        if not getattr(instance, "_volcast_guarded", False):
            handle = instance.handle_message

            def guarded(message: Any) -> None:
                try:
                    if take_frame is None or not take_frame(instance, message):
                        handle(message)
                except Exception as exc:
                    on_bad_frame(instance, exc)
                if on_frame is not None:
                    on_frame(instance, message)

            if on_send is not None:
                send = instance.send

                async def counted_send(message: Any) -> Any:
                    on_send(instance)
                    return await send(message)

                instance.send = counted_send

            instance.handle_message = guarded
            install_pump(instance, hold)
            instance._volcast_guarded = True
        return instance

    exchange.client = client
