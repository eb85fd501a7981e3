"""What ``volcast status`` shows, read from Redis keys alone, as one JSON-ready object (status_render.py
renders it as JSON or as a table).

The report never fails on a missing or malformed key: a stack that is starting has no bars, no
model and no refit yet, and those show as ``null`` in JSON and ``-`` in the table. Its shape
(``schema`` 1) is documented in docs/operations.md; adding a field keeps the number.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
import redis.exceptions as redis_errors

from volcast.calibration_state import unpack_state
from volcast.connections import redact_url
from volcast.keys import Feed, RedisKeys
from volcast.settings import Settings

SCHEMA_VERSION = 1

HEALTH_COUNTERS: tuple[str, ...] = (
    "trades",
    "duplicates",
    "late",
    "amended",
    "bars_amended",
    "gaps",
    "reconnects",
    "backfilled_trades",
    "lag_ms",
    "malformed",
    # Closed bars Redis lost in a failover (streamer/lost_bars.py): written again from the running
    # streamer's memory, or older than it keeps and missing (a data loss).
    "bars_restored",
    "bars_not_restored",
)

# How a feed's bars close (streamer/close_proof.py, streamer/liveness.py): shown as ``closing``.
CLOSING_FIELDS: tuple[str, ...] = (
    "closed_by_trade",
    "closed_by_liveness",
    "closed_by_rest",
    "close_delay_last_ms",
    "close_delay_p50_ms",
    "close_delay_p99_ms",
    "close_delay_max_ms",
    "delivery_p50_ms",
    "delivery_p99_ms",
    "delivery_max_ms",
    "grace_ms",
    "grace_auto",
    "grace_raised",
    "pings",
    "pongs",
    "stalls",
    "rest_checks",
    "watchdog_timeouts",
)

Report = dict[str, Any]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _text(raw: Any) -> dict[str, str] | None:
    """A Redis hash as text, or None for a missing key or a reply of the wrong type."""
    if not isinstance(raw, Mapping) or not raw:
        return None
    return {
        (k.decode(errors="replace") if isinstance(k, bytes) else str(k)): (
            v.decode(errors="replace") if isinstance(v, bytes) else str(v)
        )
        for k, v in raw.items()
    }


def _int(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _stream_entry(raw: Any) -> tuple[int | None, dict[str, str] | None]:
    """An XINFO first/last entry ``(id, fields)`` as (open time ms, fields)."""
    if not isinstance(raw, (list, tuple)) or len(raw) != 2:
        return None, None
    entry_id = raw[0].decode() if isinstance(raw[0], bytes) else str(raw[0])
    return _int(entry_id.partition("-")[0]), _text(raw[1])


def _health(raw: dict[str, str] | None, now: int) -> dict[str, Any]:
    health = raw or {}
    last_trade = _int(health.get("last_trade_ms"))
    if last_trade == 0:  # the streamer writes 0 before the first trade
        last_trade = None
    updated = _int(health.get("updated_ms"))
    out: dict[str, Any] = {
        "state": health.get("state"),
        "error": health.get("error") or None,  # why the feed is down or stopped, when it is
        "health_updated_ms": updated,
        "last_trade_ms": last_trade,
        "last_trade_age_s": _trade_age_s(last_trade, _int(health.get("lag_ms")), updated, now),
    }
    for name in HEALTH_COUNTERS:
        out[name] = _int(health.get(name))
    out["closing"] = {name: _int(health.get(name)) for name in CLOSING_FIELDS}
    return out


def _trade_age_s(last_trade: int | None, lag: int | None, updated: int | None, now: int) -> float | None:
    """Age of the newest trade on the exchange's clock: the streamer's lag (the exchange clock it
    measured, minus the trade's time) at its last heartbeat, plus the time since. Our own clock
    minus the trade's exchange time would be off by the machines' clock difference, and by hours
    or days against a replay, whose timestamps run faster than real time and jump when it loops.
    Without a heartbeat (the streamer is not running) only our clock is left."""
    if last_trade is None:
        return None
    if lag is not None and updated is not None:
        return round((lag + max(0, now - updated)) / 1000, 3)
    return round((now - last_trade) / 1000, 3)


def _bars(info: Any, interval_ms: int) -> dict[str, Any]:
    if not isinstance(info, Mapping):
        return {"count": None, "first_open_ms": None, "last_open_ms": None, "last": None}
    first_ms, _ = _stream_entry(info.get("first-entry"))
    last_ms, last_fields = _stream_entry(info.get("last-entry"))
    last: dict[str, Any] | None = None
    if last_fields is not None:
        last = {
            "open_time_ms": last_ms,
            "close_time_ms": last_ms + interval_ms if last_ms is not None else None,
            "volume": last_fields.get("volume"),  # exact decimal text, as stored
            "trades": _int(last_fields.get("trades")),
            "status": last_fields.get("status"),
        }
    length = info.get("length")
    return {
        "count": int(length) if isinstance(length, int) else None,
        "first_open_ms": first_ms,
        "last_open_ms": last_ms,
        "last": last,
    }


def _open_bar(raw: dict[str, str] | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    return {
        "open_time_ms": _int(raw.get("open_time_ms")),
        "volume": raw.get("volume"),
        "trades": _int(raw.get("trades")),
        "updated_ms": _int(raw.get("updated_ms")),
    }


def _prediction(raw: dict[str, str] | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    return {
        "open_time_ms": _int(raw.get("open_time_ms")),
        "last_bar_ms": _int(raw.get("last_bar_ms")),
        "volume": _float(raw.get("volume")),
        "model_name": raw.get("model_name"),
        "model_version": raw.get("model_version"),
        "baseline": raw.get("baseline") == "1" if "baseline" in raw else None,
        "created_ms": _int(raw.get("created_ms")),
        "guard": raw.get("guard") or None,  # why the output guard replaced the model's forecast
    }


# The per-feed scores hash (forecaster/live_scores.py, forecaster/recorder.py): counts and times
# are integers, the text fields text, every other field a float.
SCORE_INTEGERS = frozenset({"n", "from_ms", "to_ms", "guarded", "last_guard_ms", "banded", "covered"})
SCORE_TEXT = frozenset({"last_guard_reason"})


def _scores(raw: dict[str, str] | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    scores: dict[str, Any] = {"rmse_log": None, "mase": None}
    for name, value in raw.items():
        if name in SCORE_TEXT:
            scores[name] = value or None
        elif name in SCORE_INTEGERS:
            scores[name] = _int(value)
        else:
            scores[name] = _number_or_text(value, _float(value))
    return scores


def _calibration(raw: dict[str, str] | None) -> dict[str, Any] | None:
    """The feed's band calibrator (forecaster/calibration.py) at the next bar's horizon: whether
    its band is published calibrated (past the warm-up), how many realised bars taught it, and
    the corrections of the band's ends in log1p volume (positive: widened)."""
    if raw is None:
        return None
    def first(name: str) -> str | None:
        value = raw.get(name)
        return value.split(",")[0] if value else None
    n, warm_up = _int(first("n")), _int(raw.get("warm_up"))
    packed = unpack_state(raw.get("packed"))
    return {
        "calibrated": n >= warm_up if n is not None and warm_up is not None else None,
        "n": n,
        "warm_up": warm_up,
        "c_low": _float(first("c_low")),
        "c_high": _float(first("c_high")),
        "to_ms": _int(first("to_ms")),
        # Per horizon (target) of a multi-horizon model: realised bars with a known published
        # band, and those inside it (forecaster/calibration_horizons.py); [] for the next bar only.
        # Packed (volcast/calibration_state.py), or comma-separated in a state written before.
        "banded": [int(v) for v in packed["banded"]] if packed else _ints(raw.get("banded")),
        "covered": [int(v) for v in packed["covered"]] if packed else _ints(raw.get("covered")),
    }


def _ints(value: str | None) -> list[int]:
    try:
        return [int(v) for v in value.split(",")] if value else []
    except ValueError:
        return []


def horizon_labels(settings: Settings) -> list[str]:
    """What each horizon index of a calibrator state is: ``+1`` the next bar, ``+h`` the bar h
    intervals on, then the cumulative windows (``5m``, ...), as the configured model has them."""
    from forecaster.horizons import resolve

    try:
        spec = resolve(settings.model, settings.bars.interval)
    except ValueError:
        return []
    return [f"+{h + 1}" for h in range(spec.bars)] + [label for label, _ in spec.sums]


def coverage_summary(feeds: Sequence[Report], labels: Sequence[str] = ()) -> dict[str, Any]:
    """Live coverage of the published 80% band over every feed's scored window, and per horizon
    (``labels``) over every feed's calibrator since its state began."""
    width = max((len(f["calibration"]["banded"]) for f in feeds if f.get("calibration")), default=0)
    by_banded, by_covered = [0] * width, [0] * width
    for feed in feeds:
        state = feed.get("calibration")
        if state and len(state["banded"]) == width and len(state["covered"]) == width:
            by_banded = [a + b for a, b in zip(by_banded, state["banded"], strict=True)]
            by_covered = [a + b for a, b in zip(by_covered, state["covered"], strict=True)]
    by_horizon = {
        "labels": list(labels) if len(labels) == width else [str(j) for j in range(width)],
        "coverage_80": [c / b if b else None for c, b in zip(by_covered, by_banded, strict=True)],
        "banded": by_banded,
    }
    banded = covered = counted = 0
    for feed in feeds:
        scores = feed.get("scores") or {}
        if isinstance(scores.get("banded"), int) and isinstance(scores.get("covered"), int) and scores["banded"]:
            banded += scores["banded"]
            covered += scores["covered"]
            counted += 1
    return {"coverage_80": covered / banded if banded else None, "banded": banded, "covered": covered,
            "feeds": counted, "nominal": 0.8, "by_horizon": by_horizon}


def _number_or_text(value: str, number: int | float | None) -> Any:
    """A field this version does not know as text: its number, else (a text field of a newer
    writer) the text itself, so nothing it says is lost."""
    if number is not None or value == "":
        return number
    return value


def _model(raw: dict[str, str] | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        scores: Any = orjson.loads(raw["scores"]) if raw.get("scores") else None
    except orjson.JSONDecodeError:
        scores = raw["scores"]
    return {
        "name": raw.get("name"),
        "version": raw.get("version"),
        "promoted_ms": _int(raw.get("promoted_ms")),
        "scores": scores,
    }


def _refit(raw: dict[str, str] | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    return {
        "last_run_ms": _int(raw.get("last_run_ms")),
        "result": raw.get("result"),
        "next_run_ms": _int(raw.get("next_run_ms")),
        "message": raw.get("message"),
    }


# The forecaster's heartbeat hash (forecaster/worker.py and the parts it calls write text): one
# JSON type per field, by name, as docs/operations.md lists them.
FORECASTER_TIMES = frozenset({"updated_ms", "last_bar_ms", "last_model_error_ms", "last_dead_letter_ms",
                              "last_guard_ms"})
FORECASTER_FLAGS = frozenset({"baseline", "mqtt_connected"})
FORECASTER_TEXT = frozenset({"consumer", "model_name", "model_version", "last_model_error", "last_dead_letter",
                             "last_guard_reason", "last_guard_feed"})


def _forecaster_field(name: str, value: str) -> Any:
    if name in FORECASTER_TEXT:
        return value or None
    if name in FORECASTER_FLAGS:
        return {"1": True, "0": False}.get(value)
    if name in FORECASTER_TIMES:
        return _int(value)  # epoch milliseconds
    if name.endswith("_ms"):
        return _float(value)  # how long a step of the last batch took (last_read_ms, last_predict_ms, ...)
    return _number_or_text(value, _int(value))  # counters


def _forecaster(raw: dict[str, str] | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    return {name: _forecaster_field(name, value) for name, value in raw.items()}


def _trade_rate(feed: dict[str, Any], previous: dict[str, Any] | None, interval_ms: int) -> None:
    """Trades per second: from the health counter between two reads when there are two, else
    from the last closed bar (its trade count over its interval)."""
    if previous is not None:
        d_trades = _delta(feed.get("trades"), previous.get("trades"))
        d_ms = _delta(feed.get("health_updated_ms"), previous.get("health_updated_ms"))
        # A smaller counter means the streamer restarted: the delta says nothing then.
        if d_trades is not None and d_ms is not None and d_trades >= 0 and d_ms > 0:
            feed["trades_per_s"] = round(d_trades * 1000 / d_ms, 3)
            feed["trades_per_s_from"] = "counter"
            return
    last = feed["bars"]["last"]
    if last is not None and last["trades"] is not None:
        feed["trades_per_s"] = round(last["trades"] * 1000 / interval_ms, 3)
        feed["trades_per_s_from"] = "bar"
        return
    feed["trades_per_s"] = None
    feed["trades_per_s_from"] = None


def _delta(new: Any, old: Any) -> int | None:
    if isinstance(new, int) and isinstance(old, int):
        return new - old
    return None


async def collect_status(
    redis: aioredis.Redis, settings: Settings, *, now: int | None = None, previous: Report | None = None
) -> Report:
    """Read every key ``status`` shows in two round trips. Redis errors other than a missing or
    mistyped key propagate (the caller reports them); ``previous`` gives trade rates from counters."""
    now = now_ms() if now is None else now
    keys = RedisKeys(settings.redis.key_prefix)
    interval_ms = settings.bars.interval
    feeds = [Feed(exchange, symbol, interval_ms) for exchange, symbol in settings.feeds()]
    per_feed = 8
    async with redis.pipeline(transaction=False) as pipe:
        for feed in feeds:
            pipe.hgetall(keys.health(feed))
            pipe.xinfo_stream(keys.bars(feed))
            pipe.hgetall(keys.open_bar(feed))
            pipe.hgetall(keys.prediction(feed))
            pipe.hgetall(keys.scores(feed))
            pipe.hgetall(keys.lease(feed))
            pipe.pttl(keys.lease(feed))
            pipe.hgetall(keys.calibration(feed))
        pipe.hgetall(keys.model())
        pipe.hgetall(keys.refit())
        pipe.hgetall(keys.forecaster())
        pipe.zrangebyscore(keys.streamers(), f"({now}", "+inf")
        replies = await pipe.execute(raise_on_error=False)
    for reply in replies:
        # "no such key" (XINFO on a missing stream) and WRONGTYPE mean "nothing to show"; a lost
        # connection or a refused password must reach the caller.
        if isinstance(reply, Exception) and not isinstance(reply, redis_errors.ResponseError):
            raise reply
        if isinstance(reply, (redis_errors.AuthenticationError, redis_errors.NoPermissionError)):
            raise reply
    previous_feeds = {(f["exchange"], f["symbol"]): f for f in (previous or {}).get("feeds", [])}
    feed_reports: list[dict[str, Any]] = []
    for index, feed in enumerate(feeds):
        replied = replies[index * per_feed : (index + 1) * per_feed]
        health, info, open_bar, prediction, scores, lease, lease_ttl, calibration = replied
        report: dict[str, Any] = {"exchange": feed.exchange, "symbol": feed.symbol, "interval": feed.interval}
        report.update(_health(_text(health), now))
        report["bars"] = _bars(info, interval_ms)
        report["open_bar"] = _open_bar(_text(open_bar))
        report["prediction"] = _prediction(_text(prediction))
        report["scores"] = _scores(_text(scores))
        report["lease"] = _lease(_text(lease), lease_ttl)
        report["calibration"] = _calibration(_text(calibration))
        _trade_rate(report, previous_feeds.get((feed.exchange, feed.symbol)), interval_ms)
        feed_reports.append(report)
    model, refit, forecaster, streamer_names = replies[len(feeds) * per_feed :]
    model_report = _model(_text(model))
    forecaster_report = _forecaster(_text(forecaster))
    for report in feed_reports:
        report["baseline_reason"] = baseline_reason(report, model_report, forecaster_report, settings)
    return {
        "schema": SCHEMA_VERSION,
        "now_ms": now,
        "redis": {"url": redact_url(settings.redis.url), "key_prefix": settings.redis.key_prefix},
        "interval": feeds[0].interval if feeds else None,
        "interval_ms": interval_ms,
        "feeds": feed_reports,
        "coverage": coverage_summary(feed_reports, horizon_labels(settings)),
        "model": model_report,
        "forecaster": forecaster_report,
        "refit": _refit(_text(refit)),
        "streamers": await _streamers(redis, keys, streamer_names),
    }


def _lease(raw: dict[str, str] | None, ttl: Any) -> dict[str, Any] | None:
    """Which streamer holds the feed (``streamer.leases``), its fencing token and the lease's time left."""
    if raw is None:
        return None
    return {"owner": raw.get("owner"), "token": _int(raw.get("token")),
            "expires_in_ms": ttl if isinstance(ttl, int) and ttl >= 0 else None}


async def _streamers(redis: aioredis.Redis, keys: RedisKeys, names: Any) -> list[dict[str, Any]]:
    """The live streamers sharing the feeds (empty without leases): feeds held, refused stale writes."""
    if not isinstance(names, list) or not names:
        return []
    texts = [n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in names]
    async with redis.pipeline(transaction=False) as pipe:
        for name in texts:
            pipe.hgetall(keys.streamer(name))
        replies = await pipe.execute(raise_on_error=False)
    out = []
    for name, reply in zip(texts, replies, strict=True):
        info = _text(reply) or {}
        out.append({"name": name, "feeds": _int(info.get("feeds")), "stale_writes": _int(info.get("stale_writes")),
                    "acquired": _int(info.get("acquired")), "lost": _int(info.get("lost")),
                    "released": _int(info.get("released")), "host": info.get("host"), "pid": _int(info.get("pid"))})
    return out


def model_history(name: str | None, settings: Settings) -> tuple[int, str]:
    """Bars of history a promoted model needs before it forecasts a feed, and why so many."""
    if name == "seed":
        return settings.model.look_back, "its look_back"
    from forecaster.features import HAR_HISTORY

    if settings.model.look_back >= HAR_HISTORY:
        return settings.model.look_back, "its look_back"
    look_back = settings.model.look_back
    return HAR_HISTORY, f"the bars its HAR part reads, a day of 1-minute bars; its look_back is {look_back}"


def baseline_reason(feed: Report, model: Report | None, forecaster: Report | None, settings: Settings) -> str | None:
    """Why the feed's latest forecast came from a baseline, or None when a model made it. After a
    promotion, payloads keep saying "baseline" for feeds whose history is still too short."""
    prediction = feed["prediction"]
    if prediction is None or not prediction["baseline"]:
        return None
    if prediction.get("guard"):
        return f"the output guard replaced the model's forecast: {prediction['guard']}"
    if model is None or not model["version"]:
        return "no model promoted yet: a baseline serves until the refit worker promotes one (see refit)"
    promoted = f"{model['name']} version {model['version']}"
    serving = forecaster.get("model_version") if forecaster else None
    if forecaster is not None and forecaster.get("baseline") is not False and serving != model["version"]:
        error = forecaster.get("last_model_error")
        return f"the forecaster has not loaded {promoted} yet" + (f": {error}" if error else "")
    created, at = prediction["created_ms"], model["promoted_ms"]
    if isinstance(created, int) and isinstance(at, int) and created < at:
        return f"made before {promoted} was promoted; the next bar's forecast uses it"
    needed, why = model_history(model["name"], settings)
    count = feed["bars"]["count"]
    if count is None or count < needed:
        return f"history too short: {count or 0} bars in Redis, {promoted} needs {needed} ({why})"
    return None
