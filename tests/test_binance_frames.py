"""Binance trade frames read without ccxt's parse (streamer/binance_frames.py) against ccxt's path.

Two ccxt binance clients with the same markets get the same frames: one with the fast path, one
without (ccxt's handler, then the hook's ``trade_from_ccxt``, as before the fast path). For every
frame both must give the hook the same records (repr: Decimal digits and exponent included),
the same refusals, the same bad frames (error and text) and resolve the same ``watch_trades``
future (except the fast path's own trades, which leave it pending), and the fast path must have
taken every plain trade frame (a fast path that took nothing would pass the comparison).
Frames: the test trade files encoded as the simulator sends them, hand-made edge cases,
generated ones, and the frames of a real websocket replay with duplicate and malformed frames
injected.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import ccxt.pro
import pytest
from aiohttp import WSMessage, WSMsgType
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.binance_frames import BinanceTradeFrames, trade_frames_for
from streamer.simulator.faults import parse_faults
from streamer.simulator.frames import trade_frame
from streamer.simulator.server import ReplayServer
from streamer.simulator.tape import Tape, load_tape
from streamer.source import guard_frames, install_hook, trade_from_ccxt

DATA = Path(__file__).parent / "data"
TRADE_FILES = sorted(DATA.glob("*_trades_*.csv.gz"))
HOOKED = ("BTC/USDT", "XRP/ETH")  # ETH/USDT is listed, not hooked: its frames stay ccxt's
WS_URL = "ws://127.0.0.1:9/stream/ws"  # never dialled: frames are handed to the client
# A plain frame: the shape the fast path takes (the test asserts it took all of these); price and
# amount are plain digits, not all zeros.
_PLAIN_NUMBER = r'"(?=[0-9.]*[1-9])\d{1,20}(?:\.\d{0,30})?"'
_PLAIN = re.compile(
    r'\{"e":"trade","E":\d+,"s":"(?:BTCUSDT|XRPETH)","t":\d{1,18},'
    rf'"p":{_PLAIN_NUMBER},"q":{_PLAIN_NUMBER},"T":1[3-9]\d{{11}},"m":(?:true|false),"M":true\}}'
)

Event = tuple[Any, ...]


def _tapes() -> list[Tape]:
    return [load_tape(path) for path in TRADE_FILES]


def _frames(tape: Tape) -> list[str]:
    """The tape's frames as the simulator's websocket sends them (its own encoder)."""
    mid = tape.market_id.encode()
    return [
        trade_frame(mid, t.timestamp_ms, t.trade_id, t.price, t.amount, t.buyer_maker).decode() for t in tape.trades
    ]


class Route:
    """One client (fast path or ccxt's), and what each frame made of it."""

    def __init__(self, markets: dict[str, Any], fast: bool, exchange_id: str = "binance") -> None:
        exchange = getattr(ccxt.pro, exchange_id)(
            {"enableRateLimit": False, "urls": {"api": {"ws": {"spot": WS_URL}}},
             "options": {"fetchMarkets": {"types": ["spot"]}}}
        )
        exchange.set_markets(copy.deepcopy(list(markets.values())))
        self.exchange = exchange
        self.events: list[Event] = []
        self.frames = BinanceTradeFrames(exchange) if fast else None
        guard_frames(exchange, self._bad_frame, None, None, None if self.frames is None else self.frames.take)
        for symbol in HOOKED:
            install_hook(exchange, symbol, self._ccxt_trade(symbol), self._checked(symbol))
        self.client = exchange.client(f"{WS_URL}/0")
        resolve = self.client.resolve

        def recorded(result: Any, message_hash: Any) -> Any:
            self.events.append(("resolved", message_hash, type(result).__name__, len(self.exchange.trades)))
            return resolve(result, message_hash)

        self.client.resolve = recorded

    def _ccxt_trade(self, symbol: str) -> Any:
        return lambda raw: self.events.append((symbol, repr(trade_from_ccxt(raw))))

    def _checked(self, symbol: str) -> Any:
        return lambda checked: self.events.append((symbol, repr(checked)))

    def _bad_frame(self, _client: Any, error: Exception) -> None:
        self.events.append(("bad frame", type(error).__name__, str(error)))

    def run(self, frames: Sequence[str | WSMessage]) -> list[list[Event]]:
        """Per frame, in order: what the hook, ccxt's future and the bad-frame count heard."""
        out = []
        for frame in frames:
            message = frame if isinstance(frame, WSMessage) else WSMessage(WSMsgType.TEXT, frame, None)
            self.events = []
            taken = self.frames.taken if self.frames is not None else 0
            self.client.handle_message(message)
            if self.frames is not None and self.frames.taken > taken:
                self.events.append(("taken by the fast path",))
            out.append(self.events)
        return out


@pytest.fixture(scope="module")
def markets() -> dict[str, Any]:
    """The simulator's markets of the three test files, read by ccxt (exchangeInfo)."""

    async def read() -> dict[str, Any]:
        async with ReplayServer(_tapes(), speed=1.0) as server:
            exchange = ccxt.pro.binance(
                {"urls": {"api": {"public": server.rest_url}}, "options": {"fetchMarkets": {"types": ["spot"]}}}
            )
            try:
                return dict(await exchange.load_markets())
            finally:
                await exchange.close()

    return asyncio.run(read())


@pytest.fixture(scope="module")
def paths(markets: dict[str, Any]) -> Iterator[tuple[Route, Route]]:
    loop = asyncio.new_event_loop()

    async def make() -> tuple[Route, Route]:
        return Route(markets, fast=True), Route(markets, fast=False)

    fast, slow = loop.run_until_complete(make())
    yield fast, slow
    loop.run_until_complete(fast.exchange.close())
    loop.run_until_complete(slow.exchange.close())
    loop.close()


def _compare(paths: tuple[Route, Route], frames: Sequence[str | WSMessage]) -> list[list[Event]]:
    """Both paths on ``frames``; they must agree frame by frame. Returns what they heard."""
    fast, slow = paths
    assert fast.frames is not None
    taken = fast.frames.taken
    heard_fast, heard_slow = fast.run(frames), slow.run(frames)
    for index, (a, b) in enumerate(zip(heard_fast, heard_slow, strict=True)):
        if ("taken by the fast path",) in a:
            # The same record, and ccxt's future left pending (the feed's watch loop is not woken
            # per trade), where ccxt's handler resolves it.
            a = [e for e in a if e != ("taken by the fast path",)]
            assert not [e for e in a if e[0] == "resolved"], f"frame {index}: the fast path resolved a future"
            b = [e for e in b if e[0] != "resolved"]
        assert a == b, f"frame {index}: {frames[index]!r}"
    plain = sum(1 for f in frames if isinstance(f, str) and _PLAIN.fullmatch(f))
    assert fast.frames.taken - taken >= plain, "the fast path left plain trade frames to ccxt"
    return heard_slow


def test_the_trade_files_give_the_same_records(paths: tuple[Route, Route]) -> None:
    for tape in _tapes():
        frames = _frames(tape)
        heard = _compare(paths, frames)
        hooked = tape.symbol in HOOKED
        records = [e for events in heard for e in events if e[0] == tape.symbol]
        assert len(records) == (len(frames) if hooked else 0)
        if hooked:  # every frame a trade, both sides of the book among them
            assert all("Trade(" in r[1] for r in records)
            assert {"side='buy'", "side='sell'"} <= {s for r in records for s in re.findall(r"side='\w+'", r[1])}
            taken_all = paths[0].frames
            assert taken_all is not None and taken_all.taken > 0


_DROP = object()  # a field's value that removes it from the frame


def _frame(frame: dict[str, Any], fields: dict[str, Any]) -> str:
    for key, value in fields.items():
        if value is _DROP:
            frame.pop(key, None)
        else:
            frame[key] = value
    return json.dumps(frame, separators=(",", ":"))  # as Binance writes it; any int, unlike orjson


def _trade(**fields: Any) -> str:
    """Binance's ``<symbol>@trade`` frame (of 2021-01-08), with ``fields`` changed."""
    return _frame({"e": "trade", "E": 1610064000279, "s": "BTCUSDT", "t": 553288000, "p": "39432.41000000",
                   "q": "0.00060700", "T": 1610064000278, "m": True, "M": True}, fields)


def _agg(**fields: Any) -> str:
    """Binance's ``<symbol>@aggTrade`` frame, with ``fields`` changed."""
    return _frame({"e": "aggTrade", "E": 1610064000279, "s": "BTCUSDT", "a": 26129, "p": "0.01633102",
                   "q": "4.70443515", "f": 27781, "l": 27781, "T": 1610064000278, "m": False, "M": True}, fields)

_GOOD = _trade()
_NUMBERS = ["0", "0.000", "-1", "+1", "1e5", "1E-3", "NaN", "nan", "Infinity", "-Infinity", "", " 1", "1 ", "1.", ".5",
            "00012.50", "1" * 20, "1" * 21, "0." + "0" * 29 + "1", "0." + "0" * 30 + "1", "1." + "0" * 30,
            "99999999999999999999.999999999999999999999999999999", "１２", "1_000", "0x10", "abc", 1.5, 1, 0, None,
            True, [], {}]
EDGE_CASES: list[str | WSMessage] = [
    _GOOD,
    _trade(m=False),
    _GOOD,  # a duplicate id: both paths deliver it; the feed's ids and the aggregator drop it
    _trade(t=0), _trade(t=2**63 - 1), _trade(t=2**63), _trade(t=-5), _trade(t="553288000"), _trade(t=1.0),
    _trade(t=None), _trade(t=True), _trade(t=_DROP), _trade(t=None, a=7), _trade(t=_DROP, a=7), _trade(a=7, b=6),
    _trade(T=1610064000), _trade(T="1610064000278"), _trade(T=1610064000278.0), _trade(T=4_102_444_800_000),
    _trade(T=4_102_444_799_999), _trade(T=1_230_940_800_000), _trade(T=1_230_940_799_999), _trade(T=None),
    _trade(T=_DROP), _trade(T=True), _trade(T=-1),
    *(_trade(p=v) for v in _NUMBERS), *(_trade(q=v) for v in _NUMBERS),
    _trade(p=_DROP), _trade(q=_DROP),
    _trade(m="true"), _trade(m=1), _trade(m=None), _trade(m=_DROP),
    _trade(s="FOOBAR"), _trade(s="btcusdt"), _trade(s="ETHUSDT"), _trade(s="XRPETH"), _trade(s=None),
    _trade(s=_DROP), _trade(s=5),
    _trade(x="TRADE"), _trade(X="FILLED"), _trade(symbol="ETHUSDT"), _trade(quantity="5"), _trade(time=1),
    _trade(id=1), _trade(status="400"), _trade(error={"code": 1}), _trade(isBuyerMaker=False), _trade(side="buy"),
    _trade(M=False), _trade(M=_DROP), _trade(E=_DROP), _trade(S="BUY"), _trade(L="1.0"), _trade(Y="2.0"),
    _trade(e="aggTrade"), _trade(e="bogusEvent"), _trade(e=None),
    _agg(), _agg(m=True), _agg(a=None), _agg(a="26129"), _agg(t=5), _agg(p="0"), _agg(q="NaN"), _agg(s="XRPETH"),
    '{"stream":"btcusdt@trade","data":' + _GOOD + "}",
    _GOOD[:-1] + ',"m":false}',  # a key twice: JSON's last one counts, for both parsers alike
    _GOOD.replace('"e":"trade"', '"e": "trade"'), " " + _GOOD, _GOOD + " ", _GOOD + "x", _GOOD[:25],
    "garbage " + _GOOD[:12], '{"e":"trade","s":"BTCUSDT"}', '{"e":"bogusEvent","s":"BTCUSDT"}',
    '{"result":null,"id":1}',
    '{"e":"', "{", "[]", "[" + _GOOD + "]", '"text"', "", "null", '{"e":"trade"}',
    _GOOD.replace("39432.41000000", "39432.41000000\\u0000"), _GOOD.replace('"BTCUSDT"', '"BTC\\u0055SDT"'),
    WSMessage(WSMsgType.BINARY, _GOOD.encode(), None), WSMessage(WSMsgType.PONG, b"", None),
]


def test_edge_cases_give_the_same_records_refusals_and_bad_frames(paths: tuple[Route, Route]) -> None:
    heard = _compare(paths, EDGE_CASES)
    kinds = {e[0] for events in heard for e in events}
    # The cases reach every outcome: trades, refusals, bad frames and futures of both symbols.
    assert {"BTC/USDT", "XRP/ETH", "bad frame", "resolved"} <= kinds
    refusals = [e[1] for events in heard for e in events if e[0] == "BTC/USDT" and e[1].startswith("Refusal(")]
    reasons = {reason for r in refusals for reason in re.findall(r"reason='(\w+)'", r)}
    assert reasons >= {"id", "timestamp", "price", "amount"}


async def test_binance_us_frames_give_the_same_records(markets: dict[str, Any]) -> None:
    """Binance US: ccxt's class of its own, on binance's handler, also takes the fast path."""
    pair = Route(markets, fast=True, exchange_id="binanceus"), Route(markets, fast=False, exchange_id="binanceus")
    try:
        tape = load_tape(DATA / "binance_BTCUSDT_trades_2021-01-08_000000-000046.csv.gz")
        _compare(pair, [*EDGE_CASES, *_frames(tape)])
    finally:
        await pair[0].exchange.close()
        await pair[1].exchange.close()


def test_a_hook_without_a_receiver_is_left_to_ccxt(markets: dict[str, Any]) -> None:
    async def run() -> None:
        path = Route(markets, fast=True)
        try:
            seen: list[Any] = []
            install_hook(path.exchange, "BTC/USDT", seen.append)  # on_checked not given
            path.run([_GOOD])
            assert path.frames is not None and path.frames.taken == 0 and len(seen) == 1
        finally:
            await path.exchange.close()

    asyncio.run(run())


def test_only_binance_gets_the_fast_path() -> None:
    async def run() -> None:
        binance, kraken = ccxt.pro.binance(), ccxt.pro.kraken()
        try:
            assert isinstance(trade_frames_for(binance), BinanceTradeFrames)
            assert trade_frames_for(kraken) is None
        finally:
            await binance.close()
            await kraken.close()

    asyncio.run(run())


_values = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 2**64), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([*(v for v in _NUMBERS if isinstance(v, str)), "39432.41", "0.00060700", "BTCUSDT", "XRPETH",
                     "trade", "aggTrade"]),
    st.text("0123456789.-+eE", max_size=25),
)
_keys = st.sampled_from(["E", "s", "t", "a", "b", "p", "q", "T", "m", "M", "f", "l", "x", "id", "symbol"])


@settings(max_examples=300, deadline=None)
@given(
    event=st.sampled_from(["trade", "aggTrade", "trade", "bogus"]),
    changes=st.dictionaries(_keys, st.one_of(_values, st.just(_DROP)), max_size=4),
    symbol=st.sampled_from(["BTCUSDT", "XRPETH", "ETHUSDT"]),
)
def test_generated_frames_give_the_same_records(
    paths: tuple[Route, Route], event: str, changes: dict[str, Any], symbol: str
) -> None:
    base = _agg if event == "aggTrade" else _trade
    fields = {"s": symbol, **changes}
    if event == "bogus":
        fields["e"] = "bogus"
    _compare(paths, [base(**fields)])


@settings(max_examples=200, deadline=None)
@given(
    trade_id=st.integers(-10, 2**64), timestamp=st.integers(-10, 2**43),
    price=st.text(max_size=12), amount=st.text("0123456789.", max_size=40), maker=st.booleans(),
)
def test_simulator_encoded_frames_with_any_text_give_the_same_records(
    paths: tuple[Route, Route], trade_id: int, timestamp: int, price: str, amount: str, maker: bool
) -> None:
    frame = trade_frame(b"XRPETH", timestamp, trade_id, price, amount, maker).decode()
    _compare(paths, [frame])


async def test_a_websocket_replay_with_faults_gives_the_same_records(markets: dict[str, Any]) -> None:
    """Real frames: the simulator's websocket (duplicates and every kind of malformed frame
    injected) to a client with the fast path and a live ``watch_trades``; the frames it got then
    go through ccxt's path, and both must have heard the same."""
    tape = load_tape(DATA / "binance_BTCUSDT_trades_2021-01-08_000000-000046.csv.gz")
    faults = parse_faults("duplicate_rate=0.05,malformed_rate=0.05")  # every malformed kind
    received: list[WSMessage] = []
    trades: list[str] = []
    bad: list[str] = []
    async with ReplayServer([tape], speed=float("inf"), start_on_subscribe=True, faults=faults) as server:
        exchange = ccxt.pro.binance(
            {"enableRateLimit": False, "urls": {"api": {"public": server.rest_url, "ws": {"spot": server.ws_url}}},
             "options": {"fetchMarkets": {"types": ["spot"]}}}
        )
        frames = trade_frames_for(exchange)
        assert frames is not None
        guard_frames(exchange, lambda _c, e: bad.append(repr(e)), lambda _c, m: received.append(m), None, frames.take)
        install_hook(exchange, "BTC/USDT", lambda raw: trades.append(repr(trade_from_ccxt(raw))),
                     lambda checked: trades.append(repr(checked)))
        try:
            await exchange.load_markets()

            async def watch() -> None:
                while True:
                    await exchange.watch_trades("BTC/USDT")

            watcher = asyncio.create_task(watch())
            deadline = asyncio.get_running_loop().time() + 60
            while sum(t.startswith("Trade(") for t in trades) < len(tape.trades):
                assert asyncio.get_running_loop().time() < deadline and not watcher.done(), len(trades)
                await asyncio.sleep(0.05)
            watcher.cancel()
        finally:
            await exchange.close()
    texts = [m for m in received if m.type is WSMsgType.TEXT and not m.data.startswith('{"result"')]
    # The fast path took the plain frames (the file's amounts such as 2e-06 are ccxt's, and checked as before).
    assert frames.taken == sum(1 for m in texts if _PLAIN.fullmatch(m.data)) > len(tape.trades) * 0.9
    # Every kind of malformed frame came (simulator/frames.py malformed_frame), and duplicates.
    assert any('"bogusEvent"' in m.data for m in texts) and any(m.data.endswith('"s":"BTCUSDT"}') for m in texts)
    assert any(m.data.startswith("garbage ") for m in texts) and bad
    assert len({m.data for m in texts}) < len(texts)
    pair = Route(markets, fast=True), Route(markets, fast=False)
    try:
        heard = _compare(pair, texts)
    finally:
        await pair[0].exchange.close()
        await pair[1].exchange.close()
    # What the live client's hook heard is what ccxt's path makes of the same frames.
    assert [e[1] for events in heard for e in events if e[0] == "BTC/USDT"] == trades
    assert sum(1 for events in heard for e in events if e[0] == "bad frame") == len(bad)
