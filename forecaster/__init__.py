"""Bars to predictions: features, networks, baselines, training, model store, workers, MQTT publisher."""
