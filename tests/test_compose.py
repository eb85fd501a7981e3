"""docker-compose.yml, deploy/compose.offline.yml laid over it, the Dockerfile and deploy/: they
parse, every file they name exists, every service runs a real ``volcast`` verb with valid options,
the settings files they mount validate, and the Redis and Mosquitto config files start the real
servers installed here.

Docker cannot run in CI; Debian's ``docker-compose`` (1.29) validates the file when installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from servers import HAS_MOSQUITTO, HAS_REDIS, MOSQUITTO, free_port, start_server, stop_server

from volcast.cli import build_parser
from volcast.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
OFFLINE = ROOT / "deploy" / "compose.offline.yml"
DOCKERFILE = ROOT / "Dockerfile"
VOLCAST_SERVICES = ("stream", "forecast", "refit")
MONITORING = ("prometheus", "grafana")  # the `monitoring` profile
DEFAULT_CONFIG = "/etc/volcast/config.yml"
OFFLINE_CONFIG = "/etc/volcast/config.offline.yml"
_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?::?-([^}]*))?\}")


def _interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable substitution: ``${VAR:-default}``, ``${VAR}``, ``$$`` -> ``$``."""
    if isinstance(value, str):
        return _VARIABLE.sub(
            lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1)) or (m.group(2) or ""), value
        )
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    return value


def _compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(raw, dict)
    interpolated: dict[str, Any] = _interpolate(raw, env or {})
    return interpolated


def _merge(base: Any, over: Any) -> Any:
    """Compose's merge of an override file: mappings (services, environment, depends_on) merge key
    by key, anything else (command, healthcheck test) is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: _merge(base[k], v) if k in base else v for k, v in over.items()}}
    return over


def _offline(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml with deploy/compose.offline.yml laid over it."""
    over = _interpolate(yaml.safe_load(OFFLINE.read_text(encoding="utf-8")), env or {})
    merged: dict[str, Any] = _merge(_compose(env), {k: v for k, v in over.items() if not k.startswith("x-")})
    return merged


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> host path (relative to the repo) of the service's bind mounts."""
    mounts: dict[str, str] = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = source
    return mounts


def test_services_and_ports() -> None:
    services = _compose()["services"]
    assert set(services) == {"redis", "mosquitto", *VOLCAST_SERVICES, *MONITORING}
    assert set(_offline()["services"]) == {"redis", "mosquitto", *VOLCAST_SERVICES, *MONITORING, "replay"}
    profiles = {name: s["profiles"] for name, s in services.items() if "profiles" in s}
    assert profiles == {name: ["monitoring"] for name in MONITORING}  # the stack itself runs without one
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert published == {"mosquitto": ["1883:1883"], "grafana": ["127.0.0.1:3000:3000"]}
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", name
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_redis_and_mosquitto_services() -> None:
    services = _compose()["services"]
    redis_service = services["redis"]
    assert redis_service["healthcheck"]["test"] == ["CMD-SHELL", "redis-cli ping | grep -q PONG"]
    assert any(v.endswith(":/data") for v in redis_service["volumes"])
    assert "redis-server /usr/local/etc/redis/redis.conf" in " ".join(redis_service["command"])
    # The password reaches Redis only when set, and never as a literal in the file.
    assert redis_service["environment"]["REDISCLI_AUTH"] == ""
    with_password = _compose({"VOLCAST_REDIS_PASSWORD": "pw"})["services"]
    assert with_password["redis"]["environment"]["REDISCLI_AUTH"] == "pw"
    for name in VOLCAST_SERVICES:
        assert with_password[name]["environment"]["VOLCAST_REDIS_PASSWORD"] == "pw"
    assert "--requirepass" in " ".join(redis_service["command"])
    assert "/mosquitto/config/mosquitto.conf" in _mounts(services["mosquitto"])
    assert any(v.endswith(":/mosquitto/data") for v in services["mosquitto"]["volumes"])


def test_the_volcast_services_share_one_image_built_once() -> None:
    for services in (_compose()["services"], _offline()["services"]):
        volcast = {name: s for name, s in services.items() if name not in ("redis", "mosquitto", *MONITORING)}
        assert {s["image"] for s in volcast.values()} == {"volcast:latest"}
        builders = [name for name, s in volcast.items() if "build" in s]
        assert builders == ["stream"]
        assert volcast["stream"]["pull_policy"] == "build"  # never a registry's volcast:latest
        assert all(s["pull_policy"] == "never" for name, s in volcast.items() if name != "stream")


def test_offline_stack_sets_its_config_and_the_api_key_backfill_needs() -> None:
    online, offline = _compose()["services"], _offline()["services"]
    for name in VOLCAST_SERVICES:
        assert online[name]["environment"]["VOLCAST_CONFIG"] == DEFAULT_CONFIG
        assert online[name]["environment"]["VOLCAST_BINANCE_API_KEY"] == ""  # the real exchange: yours or none
        env = offline[name]["environment"]
        assert env["VOLCAST_CONFIG"] == OFFLINE_CONFIG
        assert env["VOLCAST_BINANCE_API_KEY"], f"{name}: backfill from the replay needs an API key"
        assert env["VOLCAST_REDIS_URL"] == "redis://redis:6379/0"  # the base environment is kept
    assert _compose({"VOLCAST_BINANCE_API_KEY": "k"})["services"]["stream"]["environment"][
        "VOLCAST_BINANCE_API_KEY"] == "k"


def test_offline_stream_waits_for_the_replay() -> None:
    depends = _offline()["services"]["stream"]["depends_on"]
    assert depends["replay"] == {"condition": "service_healthy"}
    assert depends["redis"] == {"condition": "service_healthy"}


def test_every_mounted_or_copied_file_exists() -> None:
    for name, service in _offline()["services"].items():
        for target, source in _mounts(service).items():
            assert (ROOT / source).exists(), f"{name}: {source} (mounted at {target}) does not exist"
    copied: list[str] = []
    for line in DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ").splitlines():
        if line.startswith("COPY "):
            copied += line.split()[1:-1]
    assert copied, "the Dockerfile copies nothing"
    for source in copied:
        if source == "README.md" and not (ROOT / source).exists():
            pytest.fail("README.md is missing: pyproject.toml and the Dockerfile both need it")
        assert (ROOT / source).exists(), f"Dockerfile: COPY {source}: no such file"
    dockerignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert ".venv" in dockerignore and ".env" in dockerignore


def test_dockerfile_installs_cpu_torch_before_the_project() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert text.startswith("#") and "FROM python:3.11-slim" in text
    torch = text.index("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu")
    assert torch < text.index("pip install .")
    assert "USER volcast" in text


def test_model_volume_is_shared_by_forecast_and_refit() -> None:
    services = _compose()["services"]
    for name in ("forecast", "refit"):
        assert "models:/var/lib/volcast/models" in services[name]["volumes"], name
        assert services[name]["environment"]["VOLCAST_MODEL_DIR"] == "/var/lib/volcast/models"
    assert "models" in _compose()["volumes"]


@pytest.mark.parametrize("stack", ["online", "offline"])
def test_every_service_command_is_a_real_verb_with_valid_options(stack: str, monkeypatch: pytest.MonkeyPatch) -> None:
    services = (_compose if stack == "online" else _offline)()["services"]
    config = DEFAULT_CONFIG if stack == "online" else OFFLINE_CONFIG
    # Inside the container --config defaults to $VOLCAST_CONFIG, which the service's environment sets.
    monkeypatch.setenv("VOLCAST_CONFIG", config)
    parser = build_parser()
    for name, service in services.items():
        if name in ("redis", "mosquitto", *MONITORING):
            continue
        command = service["command"]
        assert command[0] == "volcast", name
        try:
            args = parser.parse_args(command[1:])
        except SystemExit:
            pytest.fail(f"{name}: `{' '.join(command)}` is not a valid volcast command line")
        assert args.verb == (name if name != "replay" else "replay")
        check = service["healthcheck"]["test"]
        if check[:2] == ["CMD", "volcast"]:
            assert parser.parse_args(check[2:]).verb == "status"
        if name in VOLCAST_SERVICES:
            assert service["environment"]["VOLCAST_CONFIG"] == config
            assert args.config == Path(config)
            assert str(args.config) in _mounts(service)


def test_mounted_settings_files_validate() -> None:
    env = {"VOLCAST_REDIS_URL": "redis://redis:6379/0", "VOLCAST_MQTT_URL": "mqtt://mosquitto:1883",
           "VOLCAST_MODEL_DIR": "/var/lib/volcast/models"}
    seen = set()
    for service in _compose()["services"].values():
        for target, source in _mounts(service).items():
            if target.startswith("/etc/volcast/"):
                seen.add(target)
                settings = load_settings(ROOT / source, env=env)
                assert settings.redis.url == "redis://redis:6379/0"
    assert seen == {DEFAULT_CONFIG, OFFLINE_CONFIG}


def test_offline_config_points_the_streamer_at_the_replay_service() -> None:
    settings = load_settings(ROOT / "deploy" / "config.offline.yml", env={})
    services = _offline()["services"]
    replay = services["replay"]["command"]
    port = replay[replay.index("--port") + 1]
    assert replay[replay.index("--host") + 1] == "0.0.0.0"
    urls = settings.exchanges[0].urls
    assert urls["api"]["public"] == f"http://replay:{port}/api/v3"
    assert urls["api"]["ws"]["spot"] == f"ws://replay:{port}/stream/ws"
    # Without spot-only markets ccxt calls the real futures host first, and offline that never answers.
    assert settings.exchanges[0].options["fetchMarkets"] == {"types": ["spot"]}
    # Every symbol the streamer asks for is served: one shipped trades file per symbol.
    files = [replay[i + 1] for i, arg in enumerate(replay) if arg == "--trades"]
    served = {re.sub(r"^.*?_([A-Z]+)(USDT|ETH)_trades_.*$", r"\1/\2", Path(f).name) for f in files}
    assert served == set(settings.exchanges[0].symbols)
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    for path in files:
        assert Path(path).name in dockerfile and (ROOT / "tests" / "data" / Path(path).name).exists()


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (Debian 1.29) is not installed")
@pytest.mark.parametrize(("files", "profiles"), [([COMPOSE], []), ([COMPOSE, OFFLINE], []),
                                                 ([COMPOSE], ["monitoring"]), ([COMPOSE, OFFLINE], ["monitoring"])],
                         ids=["online", "offline", "online-monitoring", "offline-monitoring"])
def test_docker_compose_validates_the_file(files: list[Path], profiles: list[str], tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOLCAST_", "COMPOSE_"))}
    result = subprocess.run(
        ["docker-compose", *[a for f in files for a in ("-f", str(f))],
         *[a for p in profiles for a in ("--profile", p)], "config"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) >= {"redis", "mosquitto", *VOLCAST_SERVICES}
    assert ("replay" in resolved["services"]) == (OFFLINE in files)
    if profiles:
        assert set(resolved["services"]) >= set(MONITORING)
        assert "prometheus-data" in resolved["volumes"] and "grafana-data" in resolved["volumes"]


# -- the monitoring profile ------------------------------------------------------------------------

def test_prometheus_scrapes_each_service_on_its_metrics_port() -> None:
    """deploy/prometheus.yml names each volcast service at the port its settings serve metrics on,
    and the compose environment turns metrics on, listening beyond the container's loopback."""
    services = _compose()["services"]
    env = services["stream"]["environment"]
    settings = load_settings(ROOT / "config.yml", env=env)
    assert settings.metrics.enabled and settings.metrics.host == "0.0.0.0"
    ports = {"stream": settings.metrics.stream_port, "forecast": settings.metrics.forecast_port,
             "refit": settings.metrics.refit_port}
    for name in VOLCAST_SERVICES:
        assert services[name]["environment"]["VOLCAST_METRICS_ENABLED"] == "true", name
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text(encoding="utf-8"))
    targets = {job["job_name"]: [t for c in job["static_configs"] for t in c["targets"]]
               for job in scrape["scrape_configs"]}
    assert targets == {f"volcast-{name}": [f"{name}:{port}"] for name, port in ports.items()}
    prometheus = services["prometheus"]
    assert _mounts(prometheus)["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    grafana = _compose()["services"]["grafana"]
    mounts = _mounts(grafana)
    datasources = yaml.safe_load((ROOT / mounts["/etc/grafana/provisioning/datasources"] / "prometheus.yml")
                                 .read_text(encoding="utf-8"))["datasources"]
    assert [(d["type"], d["url"]) for d in datasources] == [("prometheus", "http://prometheus:9090")]
    providers = yaml.safe_load((ROOT / mounts["/etc/grafana/provisioning/dashboards"] / "volcast.yml")
                               .read_text(encoding="utf-8"))["providers"]
    folder = providers[0]["options"]["path"]
    dashboard_file = mounts[f"{folder}/volcast-dashboard.json"]
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == f"{folder}/volcast-dashboard.json"
    assert grafana["depends_on"]["prometheus"] == {"condition": "service_healthy"}
    dashboard = json.loads((ROOT / dashboard_file).read_text(encoding="utf-8"))
    assert dashboard["uid"] == "volcast" and isinstance(dashboard["schemaVersion"], int)
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    titles = " | ".join(p["title"] for p in panels).lower()
    for wanted in ("trades/s", "bars closed by status", "close delay p99", "forecast latency p99",
                   "baseline and guard share", "reconnects", "refit results"):
        assert wanted in titles, wanted
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variable = dashboard["templating"]["list"][0]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    for panel in panels:
        assert panel["targets"] and panel["gridPos"]["w"] > 0, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${" + variable["name"] + "}"
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            assert re.search(r"\bvolcast_(stream|forecast|refit)_", target["expr"]), target["expr"]


# -- the server config files start the real servers ----------------------------------------------

@pytest.mark.skipif(not HAS_REDIS, reason="redis-server is not installed")
def test_redis_conf_starts_redis_with_aof_everysec(tmp_path: Path) -> None:
    port = free_port()
    process = start_server(["redis-server", str(ROOT / "deploy" / "redis.conf"), "--port", str(port),
                            "--bind", "127.0.0.1", "--dir", str(tmp_path)], port, merge_output=True)
    try:
        client = redis.Redis(port=port)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        client.close()
    finally:
        stop_server(process)


@pytest.mark.skipif(not HAS_MOSQUITTO, reason="mosquitto is not installed")
def test_mosquitto_conf_starts_mosquitto_2(tmp_path: Path) -> None:
    text = (ROOT / "deploy" / "mosquitto.conf").read_text(encoding="utf-8")
    for line in ("listener 1883", "set_tcp_nodelay true", "max_queued_messages 100000", "persistence true"):
        assert line in text.splitlines(), line
    port = free_port()
    local = text.replace("listener 1883", f"listener {port} 127.0.0.1").replace(
        "persistence_location /mosquitto/data/", f"persistence_location {tmp_path}/")
    if os.geteuid() == 0:
        local = "user root\n" + local  # else it drops to user mosquitto, who cannot read tmp_path
    config = tmp_path / "mosquitto.conf"
    config.write_text(local, encoding="utf-8")
    # -v would not print unknown options: an unknown option makes mosquitto exit at once instead.
    output = stop_server(start_server([MOSQUITTO, "-c", str(config)], port, merge_output=True))
    assert "Error" not in output, output
    # The example password file has the mosquitto_passwd format: user:$7$...
    user, _, hashed = (ROOT / "deploy" / "mosquitto.passwd.example").read_text(encoding="utf-8").strip().partition(":")
    assert user == "volcast" and hashed.startswith("$7$")


@pytest.mark.skipif(not HAS_MOSQUITTO, reason="mosquitto is not installed")
def test_documented_password_file_setup_works(tmp_path: Path) -> None:
    """Uncommenting the two lines of deploy/mosquitto.conf, with the example file, requires its user."""
    import asyncio

    from pydantic import SecretStr

    from volcast.connections import ConnectionProblem, check_mqtt
    from volcast.settings import MqttSettings

    text = (ROOT / "deploy" / "mosquitto.conf").read_text(encoding="utf-8")
    passwords = tmp_path / "passwords"
    shutil.copy(ROOT / "deploy" / "mosquitto.passwd.example", passwords)
    port = free_port()
    enabled = text.replace("\nallow_anonymous true\n", "\n").replace("#allow_anonymous false", "allow_anonymous false")
    enabled = enabled.replace("#password_file /mosquitto/config/passwords", f"password_file {passwords}")
    assert "password_file" in enabled and "allow_anonymous true" not in enabled
    enabled = enabled.replace("listener 1883", f"listener {port} 127.0.0.1").replace(
        "persistence_location /mosquitto/data/", f"persistence_location {tmp_path}/")
    if os.geteuid() == 0:
        enabled = "user root\n" + enabled
    config = tmp_path / "mosquitto.conf"
    config.write_text(enabled, encoding="utf-8")
    process = start_server([MOSQUITTO, "-c", str(config)], port, merge_output=True)
    try:
        url = f"mqtt://127.0.0.1:{port}"
        asyncio.run(check_mqtt(MqttSettings(url=url, username="volcast", password=SecretStr("change-me"))))
        with pytest.raises(ConnectionProblem, match="requires a user name and password"):
            asyncio.run(check_mqtt(MqttSettings(url=url)))
    finally:
        stop_server(process)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus) is not installed")
def test_promtool_accepts_the_scrape_config_and_every_dashboard_query(tmp_path: Path) -> None:
    """Prometheus' own checker: deploy/prometheus.yml, and each Grafana query as PromQL (written
    as recording rules, which `promtool check rules` parses)."""
    config = subprocess.run(["promtool", "check", "config", str(ROOT / "deploy" / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert config.returncode == 0, config.stdout + config.stderr
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "volcast-dashboard.json").read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"volcast:dashboard_query_{i}", "expr": expr} for i, expr in enumerate(exprs)]}]}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    checked = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in checked.stdout
