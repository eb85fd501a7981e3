"""The settings schema: config.yml read into frozen models that refuse unknown keys.

A typo in config.yml must be an error that names the key, never a silent default, so every model
forbids extra keys and every field is validated. Connection settings and secrets can be overridden
from the environment (see ``ENV_OVERRIDES``), so that a compose file or a shell never has to write
a password into config.yml.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from volcast.durations import format_duration_ms, parse_duration_ms

DAY_MS = 86_400_000

DurationMs = Annotated[int, BeforeValidator(parse_duration_ms)]
"""A duration written as '500ms', '2s', '1m', '1h', '1d' (or a bare number of ms), stored in ms."""


def _positive(value: int) -> int:
    if value <= 0:
        raise ValueError("must be greater than zero")
    return value


PositiveDurationMs = Annotated[DurationMs, AfterValidator(_positive)]


class ConfigError(Exception):
    """config.yml (or an override) cannot be used; the message names the file and the key."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


@cache
def _ccxt_pro_exchanges() -> frozenset[str]:
    # ccxt is slow to import; only pay for it when a config is actually validated.
    import ccxt.pro

    return frozenset(ccxt.pro.exchanges)


def _grace_setting(value: Any) -> int | str | None:
    if value is None or value == "auto":
        return value  # type: ignore[no-any-return]
    if isinstance(value, str | int) and not isinstance(value, bool):
        return parse_duration_ms(value)
    raise ValueError("grace must be a duration such as '250ms' or 'auto'")


class ExchangeSettings(_Frozen):
    """One exchange and the symbols to stream from it."""

    id: str
    symbols: tuple[str, ...] = Field(min_length=1)
    # Merged into the ccxt client's ``options`` (e.g. tradesLimit, streamLimits).
    options: dict[str, Any] = Field(default_factory=dict)
    # Deep-merged into the ccxt client's ``urls``: how to point the real client at `volcast replay`.
    urls: dict[str, Any] = Field(default_factory=dict)
    # Binance numbers its trades consecutively per symbol, so a jump in ids proves a lost trade.
    consecutive_trade_ids: StrictBool = True
    # How late after its time a trade of this exchange can arrive, for closing a bar on a pong or a
    # REST read: "auto" (3/2 of the largest delivery delay measured in the last 10 minutes, within
    # 100 ms..bars.grace; bars.grace until measured; docs/streamer.md "Grace"), a duration, or
    # None for bars.grace. auto by default: a quiet symbol's forecast then comes ~0.2 s after its
    # bar's end instead of ~2 s, and a trade later than the grace amends its bar and raises it.
    grace: Annotated[int | Literal["auto"] | None, BeforeValidator(_grace_setting)] = "auto"

    @field_validator("id")
    @classmethod
    def _known_exchange(cls, value: str) -> str:
        if value not in _ccxt_pro_exchanges():
            raise ValueError(
                f"unknown exchange id {value!r}: use a ccxt pro exchange id such as 'binance' "
                "(python -c 'import ccxt.pro; print(ccxt.pro.exchanges)' lists them)"
            )
        return value

    @field_validator("symbols")
    @classmethod
    def _unified_symbols(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for symbol in value:
            if "/" not in symbol or symbol.strip() != symbol or not symbol:
                raise ValueError(f"symbol {symbol!r} is not a ccxt unified symbol such as 'BTC/USDT'")
        if len(set(value)) != len(value):
            raise ValueError("a symbol is listed twice")
        return value


class BarSettings(_Frozen):
    """How trades become bars."""

    interval: PositiveDurationMs = 60_000
    # How long after a bar's end a late trade is still put into it.
    grace: DurationMs = 2_000
    # How much closed-bar history Redis keeps per symbol.
    retention: PositiveDurationMs = 7 * DAY_MS
    # The open (still forming) bar is written to Redis at most this often.
    open_bar_update: PositiveDurationMs = 1_000

    @field_validator("interval")
    @classmethod
    def _aligned_interval(cls, value: int) -> int:
        if not 1_000 <= value <= DAY_MS:
            raise ValueError(f"interval must be between 1s and 1d, got {format_duration_ms(value)}")
        if DAY_MS % value != 0:
            raise ValueError(
                f"interval {format_duration_ms(value)} does not divide a day, so its bars would "
                "not align to UTC days: use e.g. 1s, 5s, 15s, 1m, 5m, 15m, 1h, 4h or 1d"
            )
        return value

    @model_validator(mode="after")
    def _grace_shorter_than_interval(self) -> BarSettings:
        if self.grace >= self.interval:
            raise ValueError("grace must be shorter than interval")
        if self.retention < self.interval:
            raise ValueError(f"retention ({format_duration_ms(self.retention)}) is shorter than one bar "
                             f"({format_duration_ms(self.interval)}): Redis would keep no closed bar")
        return self

    @property
    def retention_bars(self) -> int:
        return max(1, self.retention // self.interval)


class StreamerSettings(_Frozen):
    """The ingest loop: reconnects, watchdog, backfill, outage buffer."""

    # A connection that answers no ping for this long (or whose busy trade flow stopped) is reconnected.
    watchdog: PositiveDurationMs = 30_000
    backoff_initial: PositiveDurationMs = 500
    backoff_max: PositiveDurationMs = 30_000
    # On start, backfill at most this far back from the last closed bar; older holes become gaps.
    max_backfill: PositiveDurationMs = 3_600_000
    # Closed bars held in memory while Redis is down; past this the oldest are dropped and counted.
    buffer_bars: StrictInt = Field(default=100_000, gt=0)
    # Page size of REST trade requests during backfill.
    backfill_page: StrictInt = Field(default=1_000, gt=0, le=1_000)
    # Several `volcast stream` processes share the feeds (streamer/leases.py): each feed is streamed
    # by the one holding its lease. Off: this process streams every feed, as a single machine does.
    leases: StrictBool = False
    # A lease not renewed for this long passes to another streamer; a dead streamer's feeds are
    # taken over within lease_ttl + lease_renew (default 8 s).
    lease_ttl: PositiveDurationMs = 6_000
    # How often leases are renewed, live streamers counted and free feeds looked for.
    lease_renew: PositiveDurationMs = 2_000
    # This streamer's name in the leases and `volcast status` (default: host:pid:random).
    name: str | None = Field(default=None, min_length=1, max_length=100, pattern=r"^[^\s{}]+$")
    # Symbols per websocket connection, the busiest together (streamer/connection_plan.py): a pong
    # then closes a busy symbol's bar when its own next trade is late. 0: ccxt's own round robin.
    symbols_per_connection: StrictInt = Field(default=5, ge=0, le=200)
    # A busy connection's socket rests between reads to the next multiple of this on the loop's
    # clock, away from its bars' ends, so that one read takes many frames and the process's
    # connections and tickers (50 ms grid) wake together (streamer/receive_pump.py); 0: read
    # every frame as it comes.
    read_hold: DurationMs = 50

    @field_validator("read_hold")
    @classmethod
    def _short_hold(cls, value: int) -> int:
        if not 0 <= value <= 100:
            raise ValueError(
                f"must be 0 (off) to 100ms, got {format_duration_ms(value)}: a longer rest would delay "
                "the forming bar's trades and save few more reads"
            )
        return value

    @model_validator(mode="after")
    def _renew_within_ttl(self) -> StreamerSettings:
        if self.lease_renew * 2 > self.lease_ttl:
            raise ValueError(
                f"lease_renew ({format_duration_ms(self.lease_renew)}) must be at most half of lease_ttl "
                f"({format_duration_ms(self.lease_ttl)}), so that one late renewal does not lose a lease"
            )
        return self


class HistorySettings(_Frozen):
    """History bootstrap (streamer/history.py): a feed that starts without bars in Redis first
    loads this many days of the exchange's 1-minute candles (at most ``bars.retention``)."""

    days: StrictInt = Field(default=30, ge=0)  # 0: no history, feeds start with live bars only


class TlsSettings(_Frozen):
    enabled: StrictBool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    # Only for self-signed test setups: skips hostname and certificate verification.
    insecure: StrictBool = False


def _flag(value: Any) -> Any:
    """A bool, or its spelling in an environment variable (VOLCAST_REDIS_CLUSTER=true)."""
    if isinstance(value, str) and value.strip().lower() in {"true", "1", "yes", "false", "0", "no"}:
        return value.strip().lower() in {"true", "1", "yes"}
    return value


class RedisSettings(_Frozen):
    # Out of the repr: a URL may embed a password (redis://:pw@host).
    url: str = Field(default="redis://127.0.0.1:6379/0", repr=False)
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsSettings = TlsSettings()
    # Every key starts with this, so several deployments can share one Redis.
    key_prefix: str = "volcast"
    # Redis Cluster: ``url`` is one node of the cluster (redis:// or rediss://, database 0), and
    # ``cluster_nodes`` ("host:port") more nodes to discover it from should that one be down.
    cluster: Annotated[StrictBool, BeforeValidator(_flag)] = False
    cluster_nodes: tuple[str, ...] = ()
    # Bar-closed events of an interval go to this many streams, each in its own hash slot, a
    # feed always to the same one (keys.event_shard). 1 keeps the single stream of old.
    event_shards: StrictInt = Field(default=1, ge=1, le=1024)
    # Durability (streamer/replica_wait.py): after each batch of bars, WAIT until this many
    # replicas acknowledged them (per master written to), at most wait_timeout, before their
    # events go out. 0: off (a master killed can lose a bar it acknowledged).
    wait_replicas: StrictInt = Field(default=0, ge=0, le=16)
    wait_timeout: PositiveDurationMs = 1_000

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in {"redis", "rediss", "unix"}:
            raise ValueError(f"expected a redis://host:port/db URL, got {value!r}")
        return value

    @field_validator("cluster_nodes")
    @classmethod
    def _nodes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for node in value:
            host, _, port = node.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"cluster node {node!r} is not host:port")
        return value

    @model_validator(mode="after")
    def _cluster_url(self) -> RedisSettings:
        if not self.cluster:
            if self.cluster_nodes:
                raise ValueError("cluster_nodes is set but cluster is false: set redis.cluster to true")
            return self
        parts = urlsplit(self.url)
        if parts.scheme == "unix":
            raise ValueError("a Redis Cluster is reached over TCP: redis.url must be redis://host:port "
                             "(or rediss://), not a unix socket")
        if parts.path.strip("/") not in ("", "0"):
            raise ValueError(f"a Redis Cluster has only database 0, but redis.url names database "
                             f"{parts.path.strip('/')}: drop it from the URL")
        return self


class MqttSettings(_Frozen):
    url: str = Field(default="mqtt://127.0.0.1:1883", repr=False)
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsSettings = TlsSettings()
    topic_prefix: str = "volcast"
    qos: Literal[0, 1, 2] = 1
    retain: StrictBool = True
    client_id: str | None = None

    @field_validator("url")
    @classmethod
    def _mqtt_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"mqtt", "mqtts"} or not parts.hostname:
            raise ValueError(f"expected an mqtt://host:port URL, got {value!r}")
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _topic_prefix(cls, value: str) -> str:
        if not value or any(c in value for c in "+#\0") or value.startswith("/") or value.endswith("/"):
            raise ValueError("topic_prefix must be non-empty, without +, # or a leading/trailing /")
        return value

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)


Feature = Literal[
    "log_volume", "trades", "buy_share", "abs_return", "range", "time_of_day", "day_of_week",
    "signed_return", "price_moves", "minute_of_hour",
    # Across feeds (forecaster/market.py): off by default, see docs/accuracy.md.
    "market_volume", "exchange_volume", "market_share",
]


class ModelSettings(_Frozen):
    """Which network forecasts, and its shape."""

    # seed: the design note's reference model (raw volume, ReLU LSTM, MSE).
    # lstm: LSTM on log volume with features and quantiles (the default).
    # ensemble: lstm blended with HAR, weights fitted on validation.
    name: Literal["seed", "lstm", "ensemble"] = "lstm"
    look_back: StrictInt = Field(default=60, ge=2, le=10_000)
    features: tuple[Feature, ...] = (
        "log_volume", "trades", "buy_share", "abs_return", "signed_return", "range", "time_of_day",
        "day_of_week", "price_moves", "minute_of_hour",
    )
    hidden: StrictInt = Field(default=50, gt=0)
    layers: StrictInt = Field(default=1, ge=1, le=4)
    dropout: StrictFloat = Field(default=0.0, ge=0.0, lt=1.0)
    attention: StrictBool = False
    # Independently seeded copies of the lstm (seeds training.seed + k), their outputs averaged:
    # averaging cuts the seed-to-seed variance of the correction (docs/accuracy.md).
    members: StrictInt = Field(default=1, ge=1, le=16)
    quantiles: tuple[StrictFloat, ...] = (0.1, 0.5, 0.9)
    # Direct multi-horizon forecasts (lstm, ensemble; seed stays one step): the expected volume
    # of each of the next ``horizons`` bars from one forward pass. None: the bars of the next
    # hour at bars.interval (60 at 1m), at most 120 (forecaster/horizons.py). 1: next bar only.
    horizons: StrictInt | None = Field(default=None, ge=1, le=1_440)
    # Cumulative volume over the next ... (each a multiple of bars.interval), each with its own
    # head. None: those of 5m, 15m, 1h that span at least two bars.
    horizon_sums: tuple[PositiveDurationMs, ...] | None = None

    @field_validator("horizon_sums")
    @classmethod
    def _sums(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and list(value) != sorted(set(value)):
            raise ValueError("horizon_sums must be increasing and distinct")
        return value

    @field_validator("quantiles")
    @classmethod
    def _quantiles(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0.0 < q < 1.0 for q in value) or list(value) != sorted(set(value)):
            raise ValueError("quantiles must be increasing, distinct and strictly between 0 and 1")
        return value


class TrainingSettings(_Frozen):
    epochs: StrictInt = Field(default=8, gt=0)
    batch_size: StrictInt = Field(default=256, gt=0)
    learning_rate: StrictFloat = Field(default=2e-3, gt=0.0)
    # The last part of the training span, in time order, used for early stopping.
    validation_fraction: StrictFloat = Field(default=0.15, gt=0.0, lt=0.5)
    # Stop after this many epochs without a better validation loss (0: never stop early).
    patience: StrictInt = Field(default=3, ge=0)
    seed: StrictInt = 0
    threads: StrictInt = Field(default=1, gt=0)
    # Train on at most this many of the most recent bars per symbol (0: all).
    max_bars: StrictInt = Field(default=0, ge=0)
    # Stop after this many optimizer steps in all (per member), the cosine decay completing
    # within them (0: no cap, epochs alone). Steps, not epochs, are what the schedule is sized
    # for: the refit worker pools every feed, so one of its epochs is feeds x one file's steps.
    max_steps: StrictInt = Field(default=0, ge=0)


class RefitSettings(_Frozen):
    every: PositiveDurationMs = 6 * 3_600_000
    model_dir: Path = Path("models")
    # Model versions kept in the store; older ones are deleted after a promotion.
    keep: StrictInt = Field(default=5, gt=0)
    # The most recent bars per symbol, held out to score challenger against champion.
    holdout_bars: StrictInt = Field(default=1_440, gt=0)
    # Fewer bars than this per symbol: do not train yet.
    min_bars: StrictInt = Field(default=2_000, gt=0)
    threads: StrictInt = Field(default=1, gt=0)


class ForecasterSettings(_Frozen):
    group: str = "forecasters"
    consumer: str | None = None  # default: host name and process id
    threads: StrictInt = Field(default=1, gt=0)
    # Rolling live scores are computed over this many realised predictions per symbol.
    score_window: StrictInt = Field(default=1_440, gt=0)
    # Events pending this long on a silent consumer are claimed by another worker.
    claim_idle: PositiveDurationMs = 30_000
    # How many predictions the per-symbol stream keeps.
    predictions_kept: StrictInt = Field(default=10_000, gt=0)
    # An event whose handling failed this many times in a row, or that was delivered this many
    # times without being acknowledged (the workers that took it stopped), goes to the
    # dead-letter stream instead of being retried for ever.
    dead_letter_after: StrictInt = Field(default=3, gt=0)
    # Self-demotion (forecaster/demotion.py): a model version whose live rmse_log over the last
    # demotion_window bars it served (its feeds pooled) is above demotion_ratio x naive's on the
    # same bars, or most of whose forecasts the output guard replaced, is demoted to the previous
    # version (or the baseline). 0: never demote.
    demotion_window: StrictInt = Field(default=240, ge=0)
    demotion_ratio: StrictFloat = Field(default=1.0, gt=0.0)
    # Publish the 80% band calibrated online per feed from its realised bars
    # (forecaster/calibration.py); false: the model's own band, as trained.
    calibrate_bands: StrictBool = True
    # Also calibrate the bands of every horizon of a multi-horizon model (each coming bar and
    # window, forecaster/calibration_horizons.py); false: only the next bar's band, the horizons
    # publish the model's own. Needs calibrate_bands.
    calibrate_horizons: StrictBool = True


Port = Annotated[int, Field(ge=0, le=65_535)]


class MetricsSettings(_Frozen):
    """Prometheus endpoints (``/metrics``), one per service, so that one scrape config serves
    three processes on one machine and ``volcast run`` (stream and forecast in one process, refit
    in a child) alike. Port 0 picks a free port (logged)."""

    enabled: Annotated[StrictBool, BeforeValidator(_flag)] = False  # also VOLCAST_METRICS_ENABLED
    host: str = "127.0.0.1"  # 0.0.0.0 to be scraped from another machine or container (VOLCAST_METRICS_HOST)
    stream_port: Port = 9464
    forecast_port: Port = 9465
    refit_port: Port = 9466
    # exchange/symbol/interval labels on the streamer's per-feed metrics: about 20 series a feed.
    # False sums them per exchange (for thousands of feeds); latency histograms are never per feed.
    per_feed: StrictBool = True

    @model_validator(mode="after")
    def _distinct_ports(self) -> MetricsSettings:
        ports = [p for p in (self.stream_port, self.forecast_port, self.refit_port) if p]
        if self.enabled and len(set(ports)) != len(ports):
            raise ValueError("metrics: stream_port, forecast_port and refit_port must differ (volcast run serves "
                             "all three from one machine); 0 picks a free port")
        return self


class Settings(_Frozen):
    exchanges: tuple[ExchangeSettings, ...] = Field(min_length=1)
    bars: BarSettings = BarSettings()
    streamer: StreamerSettings = StreamerSettings()
    history: HistorySettings = HistorySettings()
    redis: RedisSettings = RedisSettings()
    mqtt: MqttSettings = MqttSettings()
    model: ModelSettings = ModelSettings()
    training: TrainingSettings = TrainingSettings()
    refit: RefitSettings = RefitSettings()
    forecaster: ForecasterSettings = ForecasterSettings()
    metrics: MetricsSettings = MetricsSettings()

    @model_validator(mode="after")
    def _distinct_exchanges(self) -> Settings:
        ids = [exchange.id for exchange in self.exchanges]
        if len(set(ids)) != len(ids):
            raise ValueError("an exchange is listed twice: put all its symbols under one entry")
        return self

    @model_validator(mode="after")
    def _exchange_grace_shorter_than_interval(self) -> Settings:
        for exchange in self.exchanges:
            if isinstance(exchange.grace, int) and exchange.grace >= self.bars.interval:
                raise ValueError(f"exchanges[{exchange.id}].grace must be shorter than bars.interval")
        return self

    @model_validator(mode="after")
    def _retention_holds_a_window(self) -> Settings:
        if self.bars.retention_bars < self.model.look_back:
            raise ValueError(
                f"bars.retention keeps {self.bars.retention_bars} bars, fewer than model.look_back "
                f"({self.model.look_back}): no forecast could ever read its window; raise bars.retention")
        return self

    @model_validator(mode="after")
    def _sums_whole_bars(self) -> Settings:
        odd = [format_duration_ms(ms) for ms in self.model.horizon_sums or () if ms % self.bars.interval]
        if odd:
            raise ValueError(f"model.horizon_sums {odd} are not whole multiples of bars.interval "
                             f"({format_duration_ms(self.bars.interval)})")
        return self

    def feeds(self) -> list[tuple[str, str]]:
        """Every (exchange id, symbol) pair, in config order."""
        return [(ex.id, symbol) for ex in self.exchanges for symbol in ex.symbols]


# Environment variable -> (section, key). A *_FILE variant reads the value from a file, as
# Docker secrets are mounted.
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "VOLCAST_REDIS_URL": ("redis", "url"),
    "VOLCAST_REDIS_USERNAME": ("redis", "username"),
    "VOLCAST_REDIS_PASSWORD": ("redis", "password"),
    "VOLCAST_REDIS_CLUSTER": ("redis", "cluster"),
    "VOLCAST_MQTT_URL": ("mqtt", "url"),
    "VOLCAST_MQTT_USERNAME": ("mqtt", "username"),
    "VOLCAST_MQTT_PASSWORD": ("mqtt", "password"),
    "VOLCAST_MODEL_DIR": ("refit", "model_dir"),
    "VOLCAST_METRICS_ENABLED": ("metrics", "enabled"),
    "VOLCAST_METRICS_HOST": ("metrics", "host"),
}


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    merged = dict(raw)
    for name, (section, key) in ENV_OVERRIDES.items():
        value = env.get(name)
        file_name = env.get(f"{name}_FILE")
        if not value and file_name:
            try:
                value = Path(file_name).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"{name}_FILE: cannot read {file_name}: {exc.strerror}") from exc
        if not value:
            continue  # compose writes ${VAR:-} as an empty string: unset, not an empty password
        part = merged.get(section) or {}
        if not isinstance(part, dict):
            continue  # the schema reports the wrong type, naming the key
        merged[section] = {**part, key: value}
    return merged


def _describe(error: Mapping[str, Any]) -> str:
    path = ".".join(str(p) for p in error["loc"]) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{path}: unknown key (check its spelling; see config.yml for every key)"
    if kind == "missing":
        return f"{path}: required key is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    if "input" in error and kind != "value_error":
        return f"{path}: {message} (got {error['input']!r})"
    return f"{path}: {message}"


def settings_from_mapping(raw: Any, *, source: str = "config", env: Mapping[str, str] | None = None) -> Settings:
    """Validate an already parsed config; errors name ``source`` and every bad key path."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    raw = _apply_env(raw, os.environ if env is None else env)
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        # A list whose item failed also reports "too short" (the bad item is left out): noise.
        locs = [tuple(error["loc"]) for error in errors]
        lines = [_describe(error) for error in errors if not (error["type"] == "too_short" and any(
            len(loc) > len(error["loc"]) and loc[: len(error["loc"])] == tuple(error["loc"]) for loc in locs))]
        raise ConfigError(f"{source}: " + "; ".join(lines)) from None


def load_settings(path: str | Path, env: Mapping[str, str] | None = None) -> Settings:
    """Read config.yml; any problem raises ConfigError with one message naming file and key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (pass --config FILE, or copy config.yml from the project)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    return settings_from_mapping(raw, source=str(path), env=env)
