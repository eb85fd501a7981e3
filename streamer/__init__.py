"""Trades to bars: the exchange source, the bar aggregator, the bar store, and the exchange simulator."""

from streamer import ccxt_lazy

# Before anything here imports ccxt: load only the exchanges a process uses (ccxt_lazy.py says
# why: about 57 MB less for a streamer). A no-op where ccxt was imported first.
ccxt_lazy.install()
