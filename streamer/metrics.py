"""The streamer's Prometheus metrics, read at each scrape from the counters the feeds keep anyway.

Nothing is counted twice: the per-feed numbers are the ``FeedHealth`` records the status task
syncs and writes to each feed's health hash (so a scrape and ``volcast status`` agree, within one
``bars.open_bar_update``), the close-delay buckets are ``CloseStats``' own, and the bar writer's
are ``StoreCounters``. Collected on the metrics server's thread (volcast/metrics_server.py):
only reads, and dicts are copied before they are walked.

Labels: ``exchange``, ``symbol``, ``interval`` on per-feed series (about 20 a feed), or, with
``metrics.per_feed: false``, ``exchange`` and ``interval`` only, summed over the feeds (gauges:
the worst feed). Histograms (close delay) and breakdowns by reason are never per feed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from streamer.close_proof import CLOSE_DELAY_BUCKETS_MS, CloseProof
from streamer.health import FeedHealth, FeedState
from streamer.trade_validation import Reason
from volcast.durations import format_duration_ms
from volcast.keys import Feed
from volcast.metric_histogram import add_counts, cumulative

if TYPE_CHECKING:
    from streamer.feed import FeedRunner
    from streamer.store import BarStore

# (metric name without the prefix and _total, FeedHealth field, help)
_FEED_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("trades", "trades", "Trades taken into bars (websocket and backfill), each once"),
    ("duplicate_trades", "duplicates", "Trades seen again (same id) and dropped"),
    ("late_trades", "late", "Trades for a bar already closed, kept out of it"),
    ("malformed_trades", "malformed", "Records refused as malformed (by reason: volcast_stream_malformed_by_reason)"),
    ("backfilled_trades", "backfilled_trades", "Trades read over REST after a disconnect or hole"),
    ("gaps", "gaps", "Holes in the trades that no backfill could fill (their bars close as gap)"),
    ("reconnects", "reconnects", "Times the feed's connection went down and was retried"),
    ("watchdog_timeouts", "watchdog_timeouts", "Connections given up by the watchdog (no pong, or a stopped flow)"),
    ("stalls", "stalls", "Trade flows that stopped implausibly long"),
    ("rest_checks", "rest_checks", "REST reads that confirmed bars after a stall"),
)
_STATUS_FIELDS = {"backfilled": "backfilled_bars", "gap": "gap_bars"}
_REASONS: tuple[Reason, ...] = ("frame", "id", "timestamp", "side", "price", "amount")
_PREFIX = "volcast_stream_"


def _label_names(per_feed: bool) -> list[str]:
    return ["exchange", "symbol", "interval"] if per_feed else ["exchange", "interval"]


class StreamerCollector:
    """A ``prometheus_client`` collector over the streamer's feeds and its bar writer."""

    def __init__(self, runners: Mapping[Feed, FeedRunner], store: BarStore, *, per_feed: bool = True) -> None:
        self._runners = runners
        self._store = store
        self._per_feed = per_feed

    def describe(self) -> list[Metric]:
        return []  # families are built at scrape time; nothing to check at registration

    def _labels(self, runner: FeedRunner) -> tuple[str, ...]:
        feed = runner.feed
        interval = format_duration_ms(feed.interval_ms)
        return (feed.exchange, feed.symbol, interval) if self._per_feed else (feed.exchange, interval)

    def collect(self) -> Iterator[Metric]:
        # A copy (one C call, not interrupted by the event loop's thread): with leases, feeds come
        # and go while a scrape runs; a feed that moved to another streamer leaves its series.
        runners = list(self._runners.values())
        names = _label_names(self._per_feed)
        yield from self._counters(runners, names)
        yield from self._bars(runners, names)
        yield from self._gauges(runners, names)
        yield from self._by_exchange(runners)
        yield from self._store_metrics()

    def _summed(self, runners: Sequence[FeedRunner], value: Callable[[FeedHealth], int]) -> dict[tuple[str, ...], int]:
        out: dict[tuple[str, ...], int] = {}
        for runner in runners:
            key = self._labels(runner)
            out[key] = out.get(key, 0) + value(runner.health)
        return out

    def _counters(self, runners: Sequence[FeedRunner], names: list[str]) -> Iterator[Metric]:
        for name, field, text in _FEED_COUNTERS:
            family = CounterMetricFamily(_PREFIX + name, text, labels=names)
            for key, value in self._summed(runners, lambda h, f=field: int(getattr(h, f))).items():  # type: ignore[misc]
                family.add_metric(key, value)
            yield family

    def _bars(self, runners: Sequence[FeedRunner], names: list[str]) -> Iterator[Metric]:
        bars = CounterMetricFamily(_PREFIX + "bars", "Bars closed, by status (history bars not included)",
                                   labels=[*names, "status"])
        complete = self._summed(runners, lambda h: h.bars_closed - h.gap_bars - h.backfilled_bars)
        for key, value in complete.items():
            bars.add_metric([*key, "complete"], value)
        for status, field in _STATUS_FIELDS.items():
            for key, value in self._summed(runners, lambda h, f=field: int(getattr(h, f))).items():  # type: ignore[misc]
                bars.add_metric([*key, status], value)
        yield bars
        closes = CounterMetricFamily(_PREFIX + "closes", "Bars closed, by the proof that closed them "
                                     "(streamer/close_proof.py)", labels=[*names, "proof"])
        for proof in CloseProof:
            field = f"closed_by_{proof.value}"
            for key, value in self._summed(runners, lambda h, f=field: int(getattr(h, f))).items():  # type: ignore[misc]
                closes.add_metric([*key, proof.value], value)
        yield closes

    def _gauges(self, runners: Sequence[FeedRunner], names: list[str]) -> Iterator[Metric]:
        worst = "" if self._per_feed else " (the worst feed)"
        for name, field, text in (
            ("lag_seconds", "lag_ms", "Exchange time now minus the newest trade's time"),
            ("delivery_delay_p50_seconds", "delivery_p50_ms", "Median trade delivery delay (recent websocket trades)"),
            ("delivery_delay_p99_seconds", "delivery_p99_ms", "p99 trade delivery delay (recent websocket trades)"),
        ):
            family = GaugeMetricFamily(_PREFIX + name, text + worst, labels=names)
            most: dict[tuple[str, ...], int] = {}
            for runner in runners:
                key = self._labels(runner)
                most[key] = max(most.get(key, 0), int(getattr(runner.health, field)))
            for key, value in most.items():
                family.add_metric(key, value / 1000)
            yield family

    def _by_exchange(self, runners: Sequence[FeedRunner]) -> Iterator[Metric]:
        """Series that are never per feed: states, refusals by reason, the close-delay histogram."""
        states = GaugeMetricFamily(_PREFIX + "feeds", "Feeds by state", labels=["exchange", "state"])
        counts: dict[tuple[str, str], int] = {}
        for runner in runners:
            for state in FeedState:
                counts.setdefault((runner.feed.exchange, state.value), 0)
            key = (runner.feed.exchange, runner.health.state.value)
            counts[key] += 1
        for key, value in counts.items():
            states.add_metric(key, value)
        yield states
        reasons = CounterMetricFamily(_PREFIX + "malformed_by_reason", "Records refused as malformed, by reason",
                                      labels=["exchange", "reason"])
        by_reason: dict[tuple[str, str], int] = {}
        for runner in runners:
            for reason in _REASONS:
                key = (runner.feed.exchange, reason)
                by_reason[key] = by_reason.get(key, 0) + int(getattr(runner.health, f"malformed_{reason}"))
        for key, value in by_reason.items():
            reasons.add_metric(key, value)
        yield reasons
        yield self._close_delays(runners)

    def _close_delays(self, runners: Sequence[FeedRunner]) -> Metric:
        family = HistogramMetricFamily(
            _PREFIX + "close_delay_seconds", "Bar end to its close on the exchange's clock (bars that ended "
            "while the feed was live), by proof", labels=["exchange", "interval", "proof"])
        buckets: dict[tuple[str, str, str], list[int]] = {}
        sums: dict[tuple[str, str, str], int] = {}
        slots = len(CLOSE_DELAY_BUCKETS_MS) + 1
        for runner in runners:
            stats = runner.close_stats
            interval = format_duration_ms(runner.feed.interval_ms)
            for proof in CloseProof:
                key = (runner.feed.exchange, interval, proof.value)
                add_counts(buckets.setdefault(key, [0] * slots), list(stats.buckets[proof]))
                sums[key] = sums.get(key, 0) + stats.delay_sum_ms[proof]
        for key, counts in buckets.items():
            family.add_metric(list(key), cumulative(CLOSE_DELAY_BUCKETS_MS, counts, 1000), sums[key] / 1000)
        return family

    def _store_metrics(self) -> Iterator[Metric]:
        store = self._store
        counters = store.counters
        for name, value, text in (
            ("bars_written", counters.bars_written, "Closed bars written to Redis (all feeds)"),
            ("dropped_bars", counters.dropped_bars, "Closed bars lost to a full buffer during a Redis outage"),
            ("redis_reconnects", counters.redis_reconnects, "Times the bar writer got Redis back after an outage"),
            ("stale_writes", counters.stale_writes,
             "Writes Redis refused for a stale lease token: another streamer had taken the feed (streamer.leases)"),
        ):
            yield CounterMetricFamily(_PREFIX + name, text, value=value)
        yield GaugeMetricFamily(_PREFIX + "redis_buffered_bars", "Closed bars waiting for Redis", value=store.pending)
