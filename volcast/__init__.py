"""volcast: real-time forecasts of crypto trading volume.

This package holds what the streamer and the forecaster share: the settings schema, the Redis
key and MQTT topic layout, the bar record, and the one command line.
"""

__version__ = "0.1.0"
