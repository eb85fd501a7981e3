"""config.yml is validated strictly: every bad file exits 2 with one message naming file and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from volcast.settings import ConfigError, load_settings, settings_from_mapping

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = "exchanges:\n  - id: binance\n    symbols: [BTC/USDT]\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_config_is_valid() -> None:
    settings = load_settings(ROOT / "config.yml", env={})
    assert settings.bars.interval == 60_000
    assert settings.feeds()[0] == ("binance", "BTC/USDT")
    assert settings.bars.retention_bars == 7 * 1440


def test_defaults_from_minimal_file(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL), env={})
    assert settings.model.name == "lstm"
    assert settings.redis.url == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (MINIMAL + "bars:\n  intervall: 1m\n", "bars.intervall: unknown key"),
        (MINIMAL + "bars:\n  interval: 1m\n  grace: lots\n", "bars.grace: cannot read duration 'lots'"),
        (MINIMAL + "bars:\n  interval: -1m\n", "bars.interval"),
        (MINIMAL + "bars:\n  interval: 7m\n", "does not divide a day"),
        (MINIMAL + "bars:\n  interval: 2d\n", "between 1s and 1d"),
        (MINIMAL + "training:\n  epochs: many\n", "training.epochs"),
        (MINIMAL + "mqtt:\n  qos: 3\n", "mqtt.qos"),
        (MINIMAL + "streamer:\n  read_hold: 1s\n", "streamer.read_hold: must be 0 (off) to 100ms, got 1s"),
        (
            "exchanges:\n  - id: notanexchange\n    symbols: [BTC/USDT]\n",
            "exchanges.0.id: unknown exchange id 'notanexchange'",
        ),
        ("exchanges:\n  - id: binance\n    symbols: []\n", "exchanges.0.symbols"),
        ("exchanges:\n  - id: binance\n    symbols: [BTCUSDT]\n", "not a ccxt unified symbol"),
        ("bars: {interval: 1m}\n", "exchanges: required key is missing"),
        (MINIMAL + "redis:\n  url: http://x\n", "redis.url: expected a redis://"),
        # A boolean is not a number, a quoted number is not a number (YAML would not say so).
        (MINIMAL + "training:\n  epochs: true\n", "training.epochs: Input should be a valid integer"),
        (MINIMAL + "streamer:\n  buffer_bars: '100'\n", "streamer.buffer_bars: Input should be a valid integer"),
        (MINIMAL + "training:\n  learning_rate: '0.01'\n", "training.learning_rate"),
        (MINIMAL + "model:\n  attention: 'yes'\n", "model.attention"),
        (MINIMAL + "model:\n  quantiles: [0.1, '0.5']\n", "model.quantiles.1"),
        (MINIMAL + "forecaster:\n  dead_letter_after: 0\n", "forecaster.dead_letter_after"),
        (MINIMAL + "bars:\n  interval: 1m\n  grace: 1s\n  retention: 30s\n", "shorter than one bar"),
        (MINIMAL + "bars:\n  retention: 30m\n", "fewer than model.look_back (60)"),
        (MINIMAL + "redis:\n  wait_replicas: -1\n", "redis.wait_replicas: Input should be greater than or equal to 0"),
        (MINIMAL + "redis:\n  wait_replicas: one\n", "redis.wait_replicas: Input should be a valid integer"),
        (MINIMAL + "redis:\n  wait_replicas: 17\n", "redis.wait_replicas: Input should be less than or equal to 16"),
        # WAIT n 0 would block the bar writer for ever
        (MINIMAL + "redis:\n  wait_timeout: 0s\n", "redis.wait_timeout: must be greater than zero"),
        (MINIMAL + "redis:\n  wait_timeout: soon\n", "redis.wait_timeout: cannot read duration 'soon'"),
    ],
)
def test_bad_settings_name_the_key(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    message = str(info.value)
    assert message.startswith(str(path))
    assert fragment in message


def test_malformed_yaml_names_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not valid YAML at line 3"):
        load_settings(write(tmp_path, "exchanges:\n  - id: binance\n   symbols: x\n"), env={})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "absent.yml", env={})


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL), env={})
    with pytest.raises(ValueError):
        settings.bars.interval = 1


def test_environment_overrides_and_secret_files(tmp_path: Path) -> None:
    secret = tmp_path / "redis_password"
    secret.write_text("s3cret\n", encoding="utf-8")
    env = {
        "VOLCAST_REDIS_URL": "redis://10.0.0.1:6380/2",
        "VOLCAST_REDIS_PASSWORD_FILE": str(secret),
        "VOLCAST_MQTT_PASSWORD": "mqtt-pw",
    }
    settings = settings_from_mapping({"exchanges": [{"id": "binance", "symbols": ["BTC/USDT"]}]}, env=env)
    assert settings.redis.url == "redis://10.0.0.1:6380/2"
    assert settings.redis.password is not None
    assert settings.redis.password.get_secret_value() == "s3cret"
    # Secrets never show in a repr or a log line built from the settings.
    assert "s3cret" not in repr(settings) and "mqtt-pw" not in repr(settings)
    assert "s3cret" not in str(settings.model_dump())


def test_cli_exits_2_with_one_message(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "redis:\n  prot: 6379\n")
    result = subprocess.run(
        [sys.executable, "-m", "volcast.cli", "stream", "--config", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 2, result.stderr
    assert f"{path}: redis.prot: unknown key" in result.stderr
    assert "Traceback" not in result.stderr
