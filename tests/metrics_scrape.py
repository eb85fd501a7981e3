"""A real scrape of a service's /metrics endpoint, parsed with prometheus_client's own parser."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """Every sample of http://127.0.0.1:port/metrics, keyed by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, /, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "volcast-dashboard.json"


def dashboard_names(prefix: str) -> set[str]:
    """The metric names starting with ``prefix`` that the Grafana dashboard's queries read."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    names: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            names.update(re.findall(rf"\b{prefix}[a-z0-9_]*", target["expr"]))
    return names


def served_names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}
