"""Why a feed stops or retries: the exceptions its runner and its exchange link raise."""

from __future__ import annotations

import ccxt.pro


class WatchdogTimeout(ccxt.NetworkError):  # type: ignore[misc]
    """The feed's connection answered no ping (or its trade flow stopped) for ``streamer.watchdog``."""


class NotTrading(ccxt.OperationFailed):  # type: ignore[misc]
    """The exchange lists the symbol but does not trade it now (halted): retried like an outage."""


class FeedStopped(Exception):  # noqa: N818 - a state, not a bug: the feed stops for good
    """This feed cannot go on (its symbol is not listed, a key of it in Redis is unusable, ...);
    the message says why and what to do. The other feeds go on."""
