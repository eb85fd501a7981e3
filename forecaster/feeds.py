"""Which feeds the workers serve, and the key a model knows each feed by."""

from __future__ import annotations

from volcast.keys import Feed
from volcast.settings import Settings


def feed_key(feed: Feed) -> str:
    """The name a model's per-symbol state (level, time-of-day profile) is stored under.

    Training (refit) and inference (worker) must use the same key, so it is built only here.
    """
    return f"{feed.exchange}:{feed.symbol}"


def configured_feeds(settings: Settings) -> list[Feed]:
    return [Feed(exchange, symbol, settings.bars.interval) for exchange, symbol in settings.feeds()]
