"""The streamer's Prometheus metrics, read at each scrape from the counters the feeds keep anyway.

Nothing is counted twice: the per-feed numbers are the ``FeedHealth`` records the status task
syncs and writes to each feed's health hash (so a scrape and ``volcast status`` agree, within one
``bars.open_bar_update``), the close-delay buckets are ``CloseStats``' own, and the bar writer's
are ``StoreCounters``. Collected on the metrics server's thread (volcast/metrics_server.py):
only reads, and dicts are copied before they are walked.

Cardinality, for thousands of feeds: only what a dashboard or an alert needs per feed carries
``exchange``, ``symbol`` and ``interval`` labels (trades, bars by status, closes by proof,
reconnects, lag: 9 series a feed), and ``metrics.per_feed: false`` sums even those per exchange
and interval (gauges: the worst feed). Everything else is always per exchange and interval:
refusals (and by reason), duplicates, late trades, backfills, gaps, watchdog timeouts, stalls,
delivery delays (the worst feed), feeds by state, and the close-delay histogram (by proof). A
feed's own figures for those are in its health hash (``volcast status``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from streamer.close_proof import CLOSE_DELAY_BUCKETS_MS, CloseProof
from streamer.health import FeedHealth, FeedState
from streamer.trade_validation import Reason
from volcast.durations import format_duration_ms
from volcast.keys import Feed
from volcast.metric_histogram import cumulative

if TYPE_CHECKING:
    from streamer.feed import FeedRunner
    from streamer.shards import FeedOwnership
    from streamer.store import BarStore

# (metric name without the prefix and _total, FeedHealth field, help): per feed (or per exchange).
_FEED_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("trades", "trades", "Trades taken into bars (websocket and backfill), each once"),
    ("reconnects", "reconnects", "Times the feed's connection went down and was retried"),
)
# Always summed per exchange and interval.
_EXCHANGE_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("duplicate_trades", "duplicates", "Trades seen again (same id) and dropped"),
    ("late_trades", "late", "Trades for a bar closed too long ago to amend, kept out of it"),
    ("amended_trades", "amended", "Trades for a recently closed bar, added to it (the bar rewritten as a revision)"),
    ("bar_revisions", "bars_amended", "Closed bars rewritten as a revision after a late trade"),
    ("malformed_trades", "malformed", "Records refused as malformed (by reason: volcast_stream_malformed_by_reason)"),
    ("backfilled_trades", "backfilled_trades", "Trades read over REST after a disconnect or hole"),
    ("gaps", "gaps", "Holes in the trades that no backfill could fill (their bars close as gap)"),
    ("watchdog_timeouts", "watchdog_timeouts", "Feed sessions ended by their connection's watchdog"),
    ("stalls", "stalls", "Trade flows that stopped implausibly long"),
    ("rest_checks", "rest_checks", "REST reads that confirmed bars after a stall"),
)
_REASONS: tuple[Reason, ...] = ("frame", "id", "timestamp", "side", "price", "amount")
_PROOF_FIELDS = tuple(f"closed_by_{proof.value}" for proof in CloseProof)
_PREFIX = "volcast_stream_"
_Key = tuple[str, ...]


class StreamerCollector:
    """A ``prometheus_client`` collector over the streamer's feeds and its bar writer."""

    def __init__(self, runners: Mapping[Feed, FeedRunner], store: BarStore, *, per_feed: bool = True) -> None:
        self._runners = runners
        self._store = store
        self._per_feed = per_feed
        self._intervals: dict[int, str] = {}
        self.ownership: FeedOwnership | None = None  # with streamer.leases: the feeds this streamer holds

    def describe(self) -> list[Metric]:
        return []  # families are built at scrape time; nothing to check at registration

    def _interval(self, interval_ms: int) -> str:
        name = self._intervals.get(interval_ms)
        if name is None:
            name = self._intervals[interval_ms] = format_duration_ms(interval_ms)
        return name

    def collect(self) -> Iterator[Metric]:
        # A copy (one C call, not interrupted by the event loop's thread): with leases, feeds come
        # and go while a scrape runs; a feed that moved to another streamer leaves its series.
        runners = list(self._runners.values())
        exchange_keys: list[_Key] = [(r.feed.exchange, self._interval(r.feed.interval_ms)) for r in runners]
        if self._per_feed:
            feed_keys: list[_Key] = [(r.feed.exchange, r.feed.symbol, key[1])
                                     for r, key in zip(runners, exchange_keys, strict=True)]
            names = ["exchange", "symbol", "interval"]
        else:
            feed_keys, names = exchange_keys, ["exchange", "interval"]
        healths = [r.health for r in runners]
        yield from self._feed_metrics(healths, feed_keys, names)
        yield from self._exchange_metrics(runners, healths, exchange_keys)
        yield self._close_delays(runners, exchange_keys)
        yield from self._store_metrics()

    @staticmethod
    def _sums(healths: Sequence[FeedHealth], keys: Sequence[_Key], fields: Sequence[str]) -> dict[_Key, list[int]]:
        """Per key, the sum over its feeds of each field (one pass)."""
        get = attrgetter(*fields)
        sums: dict[_Key, list[int]] = {}
        for health, key in zip(healths, keys, strict=True):
            values = get(health) if len(fields) > 1 else (get(health),)
            total = sums.get(key)
            if total is None:
                sums[key] = list(values)
            else:
                for i, v in enumerate(values):
                    total[i] += v
        return sums

    def _feed_metrics(self, healths: Sequence[FeedHealth], keys: Sequence[_Key], names: list[str]) -> Iterator[Metric]:
        fields = (*(f for _, f, _ in _FEED_COUNTERS), "bars_closed", "gap_bars", "backfilled_bars", *_PROOF_FIELDS)
        sums = self._sums(healths, keys, fields)
        counters = [CounterMetricFamily(_PREFIX + name, text, labels=names) for name, _, text in _FEED_COUNTERS]
        bars = CounterMetricFamily(_PREFIX + "bars", "Bars closed, by status (history bars not included)",
                                   labels=[*names, "status"])
        closes = CounterMetricFamily(_PREFIX + "closes", "Bars closed, by the proof that closed them "
                                     "(streamer/close_proof.py)", labels=[*names, "proof"])
        n = len(_FEED_COUNTERS)
        for key, values in sums.items():
            for family, value in zip(counters, values, strict=False):
                family.add_metric(key, value)
            closed, gap, backfilled = values[n:n + 3]
            bars.add_metric([*key, "complete"], closed - gap - backfilled)
            bars.add_metric([*key, "backfilled"], backfilled)
            bars.add_metric([*key, "gap"], gap)
            for proof, value in zip(CloseProof, values[n + 3:], strict=True):
                closes.add_metric([*key, proof.value], value)
        yield from counters
        yield bars
        yield closes
        lag = GaugeMetricFamily(_PREFIX + "lag_seconds", "Exchange time now minus the newest trade's time"
                                + ("" if self._per_feed else " (the worst feed)"), labels=names)
        for key, value in self._worst(healths, keys, "lag_ms").items():
            lag.add_metric(key, value / 1000)
        yield lag

    @staticmethod
    def _worst(healths: Sequence[FeedHealth], keys: Sequence[_Key], field: str) -> dict[_Key, int]:
        get = attrgetter(field)
        most: dict[_Key, int] = {}
        for health, key in zip(healths, keys, strict=True):
            value = get(health)
            if key not in most or value > most[key]:  # delays can be negative (clock offsets)
                most[key] = value
        return most

    def _exchange_metrics(self, runners: Sequence[FeedRunner], healths: Sequence[FeedHealth],
                          keys: Sequence[_Key]) -> Iterator[Metric]:
        names = ["exchange", "interval"]
        sums = self._sums(healths, keys, [f for _, f, _ in _EXCHANGE_COUNTERS])
        for i, (name, _, text) in enumerate(_EXCHANGE_COUNTERS):
            family = CounterMetricFamily(_PREFIX + name, text, labels=names)
            for key, values in sums.items():
                family.add_metric(key, values[i])
            yield family
        reasons = CounterMetricFamily(_PREFIX + "malformed_by_reason", "Records refused as malformed, by reason",
                                      labels=[*names, "reason"])
        for key, values in self._sums(healths, keys, [f"malformed_{r}" for r in _REASONS]).items():
            for reason, value in zip(_REASONS, values, strict=True):
                reasons.add_metric([*key, reason], value)
        yield reasons
        for name, field, text in (
            ("delivery_delay_p50_seconds", "delivery_p50_ms", "Median trade delivery delay (recent websocket trades)"),
            ("delivery_delay_p99_seconds", "delivery_p99_ms", "p99 trade delivery delay (recent websocket trades)"),
        ):
            gauge = GaugeMetricFamily(_PREFIX + name, text + ", the worst feed", labels=names)
            for key, value in self._worst(healths, keys, field).items():
                gauge.add_metric(key, value / 1000)
            yield gauge
        states = GaugeMetricFamily(_PREFIX + "feeds", "Feeds by state", labels=[*names, "state"])
        counts: dict[tuple[str, ...], int] = {}
        for health, key in zip(healths, keys, strict=True):
            if (*key, FeedState.LIVE.value) not in counts:
                counts.update({(*key, state.value): 0 for state in FeedState})
            counts[(*key, health.state.value)] += 1
        for state_key, value in counts.items():
            states.add_metric(state_key, value)
        yield states

    def _close_delays(self, runners: Sequence[FeedRunner], keys: Sequence[_Key]) -> Metric:
        family = HistogramMetricFamily(
            _PREFIX + "close_delay_seconds", "Bar end to its close on the exchange's clock (bars that ended "
            "while the feed was live), by proof", labels=["exchange", "interval", "proof"])
        groups: dict[_Key, list[FeedRunner]] = {}
        for runner, key in zip(runners, keys, strict=True):
            groups.setdefault(key, []).append(runner)
        for key, group in groups.items():
            stats = [runner.close_stats for runner in group]
            for proof in CloseProof:
                # Column sums in C (zip): a scrape of thousands of feeds stays a few ms.
                counts = [sum(column) for column in zip(*[list(s.buckets[proof]) for s in stats], strict=True)]
                total_ms = sum(s.delay_sum_ms[proof] for s in stats)
                family.add_metric([*key, proof.value], cumulative(CLOSE_DELAY_BUCKETS_MS, counts, 1000),
                                  total_ms / 1000)
        return family

    def _store_metrics(self) -> Iterator[Metric]:
        store = self._store
        counters = store.counters
        for name, value, text in (
            ("bars_written", counters.bars_written, "Closed bars written to Redis (all feeds)"),
            ("dropped_bars", counters.dropped_bars, "Closed bars lost to a full buffer during a Redis outage"),
            ("redis_reconnects", counters.redis_reconnects, "Times the bar writer got Redis back after an outage"),
            ("bars_restored", counters.bars_restored, "Closed bars Redis lost (a failover) written again from memory"),
            ("bars_not_restored", counters.bars_not_restored, "Closed bars Redis lost that were older than the "
             "streamer keeps: missing"),
        ):
            yield CounterMetricFamily(_PREFIX + name, text, value=value)
        yield GaugeMetricFamily(_PREFIX + "redis_buffered_bars", "Closed bars waiting for Redis", value=store.pending)
        waits = store.replica_wait
        if waits is not None:
            yield CounterMetricFamily(_PREFIX + "replica_waits", "WAITs sent after batches of bars "
                                      "(redis.wait_replicas)", value=waits.counters.waits)
            yield CounterMetricFamily(_PREFIX + "replica_wait_timeouts", "WAITs that returned before "
                                      "redis.wait_replicas replicas acknowledged the bars",
                                      value=waits.counters.timeouts)
        yield CounterMetricFamily(_PREFIX + "stale_writes", "Writes refused for a lease that passed to another "
                                  "streamer (streamer.leases)", value=counters.stale_writes)
        ownership = self.ownership
        if ownership is not None:
            yield GaugeMetricFamily(_PREFIX + "leases_held", "Feeds whose lease this streamer holds",
                                    value=len(ownership.held))
            changes = CounterMetricFamily(_PREFIX + "lease_changes", "Leases acquired, lost (taken over or lapsed) "
                                          "and released", labels=["change"])
            for change, value in (("acquired", ownership.acquired), ("lost", ownership.lost),
                                  ("released", ownership.released)):
                changes.add_metric([change], value)
            yield changes
