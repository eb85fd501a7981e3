"""A recording with edited rows in the simulator: rows it cannot send are skipped at load (and
said), bad numbers are served as written, and no REST range answers 500."""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import pytest

from streamer.simulator import ReplayServer, load_tape

ROWS = (
    "timestamp_ms,trade_id,price,amount,side\n"
    "1610064000100,1,10.5,2,buy\n"
    "1610064000200,2,abc,2,buy\n"  # not a number: cannot be sent
    "1610064000300,3,10.5,NaN,sell\n"  # a faulty exchange's number: sent as written
    "1610064000400,4,10.5,Infinity,sell\n"
    "1610064000500,5,-1,-23,buy\n"
    "1610064000600,6,sNaN,1e999999,buy\n"  # no product at all (and beyond Decimal's range)
    "1610064000700,7,10.6,1,sell\n"
)


async def test_a_price_that_is_not_a_number_is_skipped_and_rest_never_answers_500(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "binance_BTCUSDT_trades_edited.csv"
    path.write_text(ROWS, encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        tape = load_tape(path)
    assert [t.trade_id for t in tape.trades] == [1, 3, 4, 5, 6, 7]
    assert tape.skipped == (f"{path}:3: price 'abc' is not a number",)
    assert f"1 rows cannot be replayed and are skipped (first: {path}:3: price 'abc'" in caplog.text
    async with ReplayServer([tape], speed=float("inf"), as_recorded=True) as server:
        await server.done.wait()
        async with aiohttp.ClientSession() as session:
            for endpoint, query in (
                ("historicalTrades", {"fromId": "1"}),
                ("trades", {}),
                ("aggTrades", {"startTime": "1610064000000", "endTime": "1610064001000"}),
            ):
                url = f"{server.rest_url}/{endpoint}"
                async with session.get(url, params={"symbol": "BTCUSDT", **query}) as response:
                    assert response.status == 200, (endpoint, await response.text())
                    page = await response.json()
                assert len(page) == 6
        entries = {e["id"]: e for e in await _json(server.rest_url, {"fromId": "1"})}
    assert (entries[3]["qty"], entries[3]["quoteQty"]) == ("NaN", "NaN")
    assert (entries[5]["price"], entries[5]["qty"], entries[5]["quoteQty"]) == ("-1", "-23", "23")
    assert entries[6]["quoteQty"] == "NaN"


async def _json(rest_url: str, query: dict[str, str]) -> list[dict[str, object]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{rest_url}/historicalTrades", params={"symbol": "BTCUSDT", **query}) as response,
    ):
        result: list[dict[str, object]] = await response.json()
        return result
