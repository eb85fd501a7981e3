"""``volcast status`` as text: the report (status_report.py) rendered as JSON or as a table."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from volcast.status_report import Report


def render_json(report: Report) -> str:
    return orjson.dumps(report).decode()


# -- the table ------------------------------------------------------------------------------

DASH = "-"


def format_age(ms: int | None) -> str:
    """A duration for people: 850ms, 12.3s, 4m 05s, 2h 10m, 3d 4h; '-' when unknown."""
    if ms is None:
        return DASH
    sign = "-" if ms < 0 else ""
    ms = abs(ms)
    if ms < 1_000:
        return f"{sign}{ms}ms"
    if ms < 60_000:
        return f"{sign}{ms / 1000:.1f}s"
    seconds = ms // 1000
    if seconds < 3600:
        return f"{sign}{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 86_400:
        return f"{sign}{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{sign}{seconds // 86_400}d {seconds % 86_400 // 3600}h"


def format_time(ms: int | None) -> str:
    if ms is None:
        return DASH
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _cell(value: Any, digits: int = 3) -> str:
    if value is None or value == "":
        return DASH
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1e6 or (0 < abs(value) < 1e-3) else f"{value:.{digits}f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return lines


def _flag(value: Any) -> Any:
    return ("yes" if value else "no") if isinstance(value, bool) else value


def _counts(*values: int | None) -> str:
    """``12/3/0``; a dash while the streamer has not written them."""
    if any(v is None for v in values):
        return DASH
    return "/".join(str(v) for v in values)


def _milliseconds(*values: int | None) -> str:
    """``12/340/2100ms``; a dash while the streamer has not written them."""
    counts = _counts(*values)
    return counts if counts == DASH else counts + "ms"


def _grace(ms: int | None, auto: int | None, raised: int | None = None) -> str:
    """``2000ms``, ``240ms auto``, ``260ms auto raised``; a dash before a streamer that reports it."""
    if not ms:
        return DASH
    return f"{ms}ms auto raised" if auto and raised else f"{ms}ms auto" if auto else f"{ms}ms"


def _ago(now: int, ms: int | None) -> str:
    return DASH if ms is None else f"{format_age(now - ms)} ago"


HORIZONS_SHOWN = frozenset({"+1", "+2", "+5", "+15", "+30", "+60"})


def _coverage(scores: Report | None) -> str:
    """``0.803 of 1440``: the share of the window's bars inside their published band."""
    if not scores or not isinstance(scores.get("coverage_80"), float) or not scores.get("banded"):
        return DASH
    return f"{scores['coverage_80']:.3f} of {scores['banded']}"


def _band(calibration: Report | None) -> str:
    """``calibrated`` or ``raw 12/60`` (warming up), from the feed's calibrator state."""
    if calibration is None or calibration["calibrated"] is None:
        return DASH
    if calibration["calibrated"]:
        return "calibrated"
    return f"raw {calibration['n']}/{calibration['warm_up']}"


def data_loss(name: str, missing: int) -> str:
    """The line under the feeds for bars Redis lost in a failover that the streamer could not
    write again: they are gone for good, so it says so in capitals and where to read what to do."""
    bars = "bar" if missing == 1 else "bars"
    return (f"{name}: DATA LOSS: {missing} closed {bars} missing from Redis (lost in a failover, older than the "
            "streamer keeps to write back); they stay missing and are read as empty bars. What to do: "
            'docs/operations.md, "Failover: a master dies"')


def refit_outcome(result: str | None, message: str | None) -> str:
    """A refit's result and message in one phrase, the result said once: the refit worker's
    messages often name it already ("version 3 promoted: ...")."""
    if not message:
        return result or ""
    if not result or result in message.partition(":")[0].split():
        return message
    return f"{result}: {message}"


def render_table(report: Report) -> str:
    """Plain text with aligned columns: feeds, bars, forecasts, then model, forecaster and refit."""
    now: int = report["now_ms"]
    feeds: list[dict[str, Any]] = report["feeds"]
    lines = [
        f"volcast status at {format_time(now)} UTC  redis {report['redis']['url']}  "
        f"prefix {report['redis']['key_prefix']}",
        "",
    ]
    names = [f"{f['exchange']} {f['symbol']}" for f in feeds]
    if any(f.get("lease") for f in feeds):  # several streamers share the feeds (streamer.leases)
        lines += _table(
            ["LEASE", "OWNER", "TOKEN", "EXPIRES IN"],
            [
                [name, _cell(lease["owner"]), _cell(lease["token"]), format_age(lease["expires_in_ms"])]
                if (lease := f.get("lease")) else [name, "- (nobody)", DASH, DASH]
                for name, f in zip(names, feeds, strict=True)
            ],
        )
        for streamer in report.get("streamers") or []:
            lines.append(f"streamer {streamer['name']}: {_cell(streamer['feeds'])} feeds, "
                         f"{_cell(streamer['stale_writes'])} stale writes refused, pid {_cell(streamer['pid'])} "
                         f"on {_cell(streamer['host'])}")
        lines.append("")
    lost = any(f["bars_restored"] or f["bars_not_restored"] for f in feeds)
    lines += _table(
        ["FEED", "STATE", "LAST TRADE AGE", "TRADES/S", "TRADES", "DUPLICATES", "LATE/AMENDED", "GAPS", "RECONNECTS",
         "BACKFILLED", "HEARTBEAT", "CLOSED TRADE/PONG/REST", "CLOSE DELAY LAST/P99/MAX", "DELIVERY P50/P99/MAX",
         "GRACE"] + (["LOST BARS RESTORED/MISSING"] if lost else []),
        [
            [
                name,
                _cell(f["state"]),
                format_age(int(f["last_trade_age_s"] * 1000)) if f["last_trade_age_s"] is not None else DASH,
                _cell(f["trades_per_s"], 2),
                _cell(f["trades"]),
                _cell(f["duplicates"]),
                _counts(f["late"], f["amended"]),
                _cell(f["gaps"]),
                _cell(f["reconnects"]),
                _cell(f["backfilled_trades"]),
                _ago(now, f["health_updated_ms"]),
                _counts(f["closing"]["closed_by_trade"], f["closing"]["closed_by_liveness"],
                        f["closing"]["closed_by_rest"]),
                _milliseconds(f["closing"]["close_delay_last_ms"], f["closing"]["close_delay_p99_ms"],
                              f["closing"]["close_delay_max_ms"]),
                _milliseconds(f["closing"]["delivery_p50_ms"], f["closing"]["delivery_p99_ms"],
                              f["closing"]["delivery_max_ms"]),
                _grace(f["closing"]["grace_ms"], f["closing"]["grace_auto"], f["closing"]["grace_raised"]),
            ]
            + ([_counts(f["bars_restored"], f["bars_not_restored"])] if lost else [])
            for name, f in zip(names, feeds, strict=True)
        ],
    )
    lines += [data_loss(name, f["bars_not_restored"]) for name, f in zip(names, feeds, strict=True)
              if f["bars_not_restored"]]
    lines.append("")
    lines += _table(
        [f"BARS ({report['interval'] or DASH})", "COUNT", "FIRST OPEN (UTC)", "LAST OPEN (UTC)", "LAST VOLUME",
         "LAST TRADES", "LAST STATUS", "FORMING VOLUME"],
        [
            [
                name,
                _cell(f["bars"]["count"]),
                format_time(f["bars"]["first_open_ms"]),
                format_time(f["bars"]["last_open_ms"]),
                _cell(f["bars"]["last"]["volume"] if f["bars"]["last"] else None),
                _cell(f["bars"]["last"]["trades"] if f["bars"]["last"] else None),
                _cell(f["bars"]["last"]["status"] if f["bars"]["last"] else None),
                _cell(f["open_bar"]["volume"] if f["open_bar"] else None),
            ]
            for name, f in zip(names, feeds, strict=True)
        ],
    )
    lines.append("")
    lines += _table(
        ["FORECAST", "FOR BAR (UTC)", "VOLUME", "MODEL", "MADE", "RMSE_LOG", "MASE", "COVERAGE 80%", "BAND"],
        [
            [
                name,
                format_time(p["open_time_ms"]) if (p := f["prediction"]) else DASH,
                _cell(p["volume"]) if p else DASH,
                f"{p['model_name'] or DASH} {p['model_version'] or DASH}" if p else DASH,
                _ago(now, p["created_ms"]) if p else DASH,
                _cell(f["scores"]["rmse_log"]) if f["scores"] else DASH,
                _cell(f["scores"]["mase"]) if f["scores"] else DASH,
                _coverage(f["scores"]),
                _band(f["calibration"]),
            ]
            for name, f in zip(names, feeds, strict=True)
        ],
    )
    total = report["coverage"]
    if total["banded"]:
        lines.append(f"80% band coverage, all feeds: {total['coverage_80']:.3f} of {total['banded']} bars of "
                     f"{total['feeds']} feed(s) (nominal 0.80)")
    by_horizon = total["by_horizon"]
    known = [(label, c) for label, c in zip(by_horizon["labels"], by_horizon["coverage_80"], strict=True)
             if c is not None]
    if known:
        shown = [(label, c) for label, c in known if label in HORIZONS_SHOWN or not label.startswith("+")]
        values = [c for _, c in known]
        lines.append("80% band coverage by horizon, all feeds: "
                     + ", ".join(f"{label} {c:.3f}" for label, c in shown)
                     + f" (min {min(values):.3f}, max {max(values):.3f} over {len(values)} horizons)")
    reasons = [(name, f["baseline_reason"]) for name, f in zip(names, feeds, strict=True) if f.get("baseline_reason")]
    for name, reason in reasons:
        lines.append(f"{name}: baseline because {reason}")
    lines.append("")
    model = report["model"]
    if model is None:
        lines.append("model       -")
    else:
        lines.append(
            f"model       {model['name'] or DASH} version {model['version'] or DASH}, promoted "
            f"{_ago(now, model['promoted_ms'] or None)}"
            + (f", scores {orjson.dumps(model['scores']).decode()}" if model["scores"] else "")
        )
    forecaster = report["forecaster"]
    if forecaster is None:
        lines.append("forecaster  -")
    else:
        updated = forecaster.get("updated_ms")
        heartbeat = f"heartbeat {_ago(now, updated)}" if isinstance(updated, int) else ""
        others = ", ".join(f"{k}={_flag(v)}" for k, v in sorted(forecaster.items()) if k != "updated_ms")
        lines.append(f"forecaster  {heartbeat}{', ' if heartbeat and others else ''}{others}")
    refit = report["refit"]
    if refit is None:
        lines.append("refit       -")
    else:
        next_run = refit["next_run_ms"]
        next_text = DASH if next_run is None else (
            f"in {format_age(next_run - now)}" if next_run >= now else f"due {format_age(now - next_run)} ago"
        )
        lines.append(
            f"refit       last run {_ago(now, refit['last_run_ms'])}: "
            f"{refit_outcome(refit['result'], refit['message']) or DASH}; next run {next_text}"
        )
    return "\n".join(lines) + "\n"
