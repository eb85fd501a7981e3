"""Pure unit tests of the ccxt side: exact conversion and the trade hook."""

from __future__ import annotations

from decimal import Decimal
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from streamer.source import HookedTradeCache, client_symbols, subscription_sent, trade_from_ccxt
from streamer.trade_validation import Refusal
from volcast.bar import Trade


def _ccxt_trade(**overrides: Any) -> dict[str, Any]:
    trade: dict[str, Any] = {
        "id": "553288000", "timestamp": 1610064000278, "symbol": "BTC/USDT", "side": "sell",
        "price": 39432.41, "amount": 0.000607,
        "info": {"e": "trade", "t": 553288000, "p": "39432.41000000", "q": "0.00060700", "T": 1610064000278, "m": True},
    }
    trade.update(overrides)
    return trade


def test_binance_strings_give_exact_decimals() -> None:
    expected = Trade(1610064000278, 553288000, Decimal("39432.41"), Decimal("0.000607"), "sell")
    assert trade_from_ccxt(_ccxt_trade()) == expected


def test_rest_field_names_and_float_fallback() -> None:
    rest = trade_from_ccxt(_ccxt_trade(info={"id": 1, "price": "0.00141557", "qty": "11.00000000"}))
    assert isinstance(rest, Trade)
    assert (rest.price, rest.amount) == (Decimal("0.00141557"), Decimal("11"))
    bare = trade_from_ccxt(_ccxt_trade(info={}, price=0.1, amount=3.3, side=None))
    assert isinstance(bare, Trade)
    # repr, not the binary expansion of the float: 0.1 stays 0.1.
    assert (bare.price, bare.amount, bare.side) == (Decimal("0.1"), Decimal("3.3"), None)


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        ({"id": None}, "id"),
        ({"id": "12a"}, "id"),
        ({"timestamp": None}, "timestamp"),
        ({"timestamp": 1610064000}, "timestamp"),  # seconds
        ({"info": {}, "price": None}, "price"),
        ({"info": {"p": "NaN", "q": "1"}}, "price"),
        ({"info": {"p": "1", "q": "-23"}}, "amount"),
        ({"info": {"p": "1", "q": "Infinity"}}, "amount"),
        ({"info": {}, "amount": float("inf")}, "amount"),
        ({"info": {"p": "1", "q": "0"}}, "amount"),
        ({"side": "short"}, "side"),
    ],
)
def test_bad_values_are_refused_with_their_reason(broken: dict[str, Any], reason: str) -> None:
    refusal = trade_from_ccxt(_ccxt_trade(**broken))
    assert isinstance(refusal, Refusal) and refusal.reason == reason
    # What identifies the trade is kept when usable: its bar can say it lacks a trade.
    if reason not in ("id", "timestamp"):
        assert (refusal.trade_id, refusal.timestamp_ms) == (553288000, 1610064000278)


def test_hook_sees_every_trade_while_the_ring_stays_small() -> None:
    seen: list[dict[str, Any]] = []
    cache = HookedTradeCache(seen.append, max_size=16)
    for i in range(10_000):
        cache.append(_ccxt_trade(id=str(i)))
    assert [t["id"] for t in seen] == [str(i) for i in range(10_000)]
    assert len(cache) == 16


def test_client_symbols_from_subscription_hashes() -> None:
    class Client:
        def __init__(self) -> None:
            self.subscriptions: dict[str, dict[str, object]] = {"trade::BTC/USDT": {}, "unsubscribe:trade:BTC/USDT": {}}
            self.futures = {"trade::ETH/USDT": None}

    assert client_symbols(Client()) == ["BTC/USDT", "ETH/USDT"]


def test_subscription_sent_needs_a_connected_socket_and_an_empty_throttle() -> None:
    class Done:
        def __init__(self, done: bool) -> None:
            self._done = done

        def done(self) -> bool:
            return self._done

    class Throttle:
        def __init__(self, queued: int) -> None:
            self.queue = [object()] * queued

    class Client:
        def __init__(self, connected: bool, queued: int, symbol: str = "BTC/USDT") -> None:
            self.connected = Done(connected)
            self.throttle = Throttle(queued)
            self.subscriptions = {f"trade::{symbol}": True}
            self.futures: dict[str, object] = {}

    class Exchange:
        def __init__(self, *clients: Client) -> None:
            self.clients = {str(i): c for i, c in enumerate(clients)}

    assert subscription_sent(Exchange(Client(True, 0)), "BTC/USDT")
    assert not subscription_sent(Exchange(Client(False, 0)), "BTC/USDT")  # still connecting
    assert not subscription_sent(Exchange(Client(True, 3)), "BTC/USDT")  # queued behind the throttle
    assert not subscription_sent(Exchange(Client(True, 0, "ETH/USDT")), "BTC/USDT")
    assert not subscription_sent(Exchange(), "BTC/USDT")


# Values an exchange's record may hold under the price and amount keys: plain texts, other texts,
# empty, numbers and None; the keys present or not.
_field_values = st.one_of(
    st.none(), st.just(""), st.sampled_from(["39432.41000000", "0", "1E-3", "NaN", " 1"]),
    st.text("0123456789.", max_size=8), st.integers(-5, 5), st.floats(allow_nan=True),
)
_infos = st.dictionaries(st.sampled_from(["p", "q", "price", "qty", "px", "amount", "size", "sz", "volume"]),
                         _field_values, max_size=5)


@given(info=_infos, price=_field_values, amount=_field_values, side=st.sampled_from(["buy", "sell", None, "", "x"]))
@example(info={"p": "1.5", "q": "2"}, price=1.5, amount=2.0, side="buy")
@example(info={"p": "", "q": "2", "price": "3"}, price=None, amount=None, side="sell")
@example(info={"p": 1, "q": "2"}, price=None, amount=None, side=None)
def test_info_read_as_a_dict_or_as_any_mapping_gives_the_same_answer(
    info: dict[str, Any], price: Any, amount: Any, side: Any
) -> None:
    # trade_from_ccxt reads a plain dict's first keys directly (ccxt's own records, on every
    # trade); any other Mapping takes the general reading: both must give the same Trade or Refusal.
    as_dict = trade_from_ccxt(_ccxt_trade(info=info, price=price, amount=amount, side=side))
    as_mapping = trade_from_ccxt(_ccxt_trade(info=MappingProxyType(info), price=price, amount=amount, side=side))
    assert as_dict == as_mapping
