"""Trades to bars: the exchange source, the bar aggregator, the bar store, and the exchange simulator."""
