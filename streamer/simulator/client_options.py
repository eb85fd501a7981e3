"""The ccxt settings that point ``ccxt.pro.binance`` at a running simulator."""

from __future__ import annotations

from typing import Any, Protocol


class _Serves(Protocol):
    @property
    def rest_url(self) -> str: ...

    @property
    def ws_url(self) -> str: ...


def binance_client_options(server: _Serves, *, trades_limit: int = 1_000_000) -> dict[str, Any]:
    """``{"urls": ..., "options": ...}``, the shape of ``exchanges[].urls/options`` in config.yml.

    Deep-merge it into ccxt's own ``urls``/``options`` (a shallow update of ``urls`` would drop
    Binance's other hosts). ``tradesLimit`` is raised because ccxt's default (1000) ring buffer
    drops trades of a burst before the consumer runs; ``fetchMarkets`` spot-only keeps ccxt off
    the real futures hosts.
    """
    return {
        "urls": {"api": {"public": server.rest_url, "ws": {"spot": server.ws_url}}},
        "options": {"fetchMarkets": {"types": ["spot"]}, "tradesLimit": trades_limit},
    }


def deep_merge(target: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Merge ``extra`` into ``target`` in place, nested dicts key by key; returns ``target``."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            deep_merge(target[key], value)
        else:
            target[key] = value
    return target
