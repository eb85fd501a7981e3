"""The order in which a streamer with leases tries free feeds (streamer/shards.py
``acquisition_order``): whole planned connections, so that sharing the feeds does not scatter
each streamer's feeds over every connection. Stand-in links carry only the plan; no network."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from streamer.shards import acquisition_order
from volcast.keys import Feed


def _feeds(count: int, per_connection: int) -> tuple[dict[Feed, Any], Any]:
    symbols = [f"S{i}/USDT" for i in range(count)]
    plan = {s: i // per_connection for i, s in enumerate(symbols)} if per_connection else {}
    link = SimpleNamespace(connections=plan)
    return {Feed("binance", s, 60_000): link for s in symbols}, link


def test_whole_planned_connections_in_an_order_of_each_streamers_own() -> None:
    feeds, link = _feeds(20, 5)
    orders = {name: acquisition_order(cast(Any, feeds), name) for name in ("s1", "s2", "stream-a", "stream-b")}
    for order in orders.values():
        assert len(order) == len(feeds) and set(order) == set(feeds)
        connections = [link.connections[f.symbol] for f in order]
        # Runs of 5: each connection's feeds together, in the plan's order within it.
        assert all(len(set(connections[i:i + 5])) == 1 for i in range(0, 20, 5)), connections
        for i in range(0, 20, 5):
            assert [f.symbol for f in order[i:i + 5]] == sorted((f.symbol for f in order[i:i + 5]),
                                                                key=lambda s: int(s[1:].split("/")[0]))
    # Two names rarely start on the same connection: here not all four the same order.
    assert len({tuple(order) for order in orders.values()}) > 1
    # The same name, the same order (a restart tries the feeds it is likely to get back).
    assert acquisition_order(cast(Any, feeds), "s1") == orders["s1"]


def test_the_latest_acquired_half_is_whole_connections() -> None:
    """One streamer alone takes every feed; when a second joins it gives up the latest acquired
    half (shards.py ``round``), which is then whole connections: 2 of the 4, not parts of all."""
    feeds, link = _feeds(20, 5)
    for name in ("s1", "s2", "x"):
        given_up = acquisition_order(cast(Any, feeds), name)[-10:]
        assert len({link.connections[f.symbol] for f in given_up}) == 2


def test_without_a_plan_each_feed_alone() -> None:
    feeds, _link = _feeds(12, 0)
    order = acquisition_order(cast(Any, feeds), "s1")
    assert len(order) == len(feeds) and set(order) == set(feeds)
    assert order != list(feeds) or acquisition_order(cast(Any, feeds), "s2") != list(feeds)
