"""Passwords and TLS against real servers started here on free ports: a redis-server with
requirepass (and with a TLS port), a mosquitto with a password file (and with a TLS listener).

Right credentials connect; wrong or missing ones raise ConnectionProblem with a message that
says which setting to fix, and never contains the secret.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import orjson
import pytest
from pydantic import SecretStr
from servers import MOSQUITTO, free_port, start_server, stop_server

from forecaster.mqtt_wire import Connection, ConnectRefusedError
from forecaster.publisher import Publisher
from volcast.commands import status
from volcast.connections import (
    ConnectionProblem,
    check_mqtt,
    check_redis,
    mqtt_client,
    mqtt_credentials,
    redact_url,
    redis_client,
)
from volcast.settings import MqttSettings, RedisSettings, TlsSettings, load_settings

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
OPENSSL = shutil.which("openssl")

needs_redis = pytest.mark.skipif(not Path(REDIS_SERVER).exists(), reason="redis-server is not installed")
needs_mosquitto = pytest.mark.skipif(
    not (Path(MOSQUITTO).exists() and Path(MOSQUITTO_PASSWD).exists()), reason="mosquitto is not installed"
)
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")

REDIS_PASSWORD = "correct horse battery staple"
MQTT_USER, MQTT_PASSWORD = "volcast", "s3cret-mqtt"


def _secret(value: str | None) -> SecretStr | None:
    return None if value is None else SecretStr(value)


def _mosquitto_config(tmp_path: Path, name: str, lines: list[str]) -> Path:
    config = tmp_path / f"{name}.conf"
    # As root, mosquitto drops to user "mosquitto", who cannot read pytest's private tmp dirs.
    user = ["user root"] if os.geteuid() == 0 else []
    config.write_text("\n".join([*user, "persistence false", "log_dest stderr", *lines]) + "\n", encoding="utf-8")
    return config


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost signed by it."""
    if OPENSSL is None:
        pytest.skip("openssl is not installed")
    where = tmp_path_factory.mktemp("certs")
    ca_key, ca_crt = where / "ca.key", where / "ca.crt"
    key, csr, crt, ext = where / "server.key", where / "server.csr", where / "server.crt", where / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n", encoding="utf-8")

    def run(*argv: str | Path) -> None:
        subprocess.run([OPENSSL, *map(str, argv)], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca_crt, "-days", "2",
        "-subj", "/CN=volcast test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    run("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial", "-out", crt,
        "-days", "2", "-extfile", ext)
    return {"ca": ca_crt, "cert": crt, "key": key}


@pytest.fixture(scope="module")
def redis_with_password() -> Iterator[int]:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed")
    port = free_port()
    process = start_server([REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", REDIS_PASSWORD,
                      "--save", "", "--appendonly", "no"], port)
    yield port
    stop_server(process)


@pytest.fixture(scope="module")
def redis_with_tls(certs: dict[str, Path]) -> Iterator[int]:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed")
    port = free_port()
    process = start_server([REDIS_SERVER, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                      "--tls-cert-file", str(certs["cert"]), "--tls-key-file", str(certs["key"]),
                      "--tls-ca-cert-file", str(certs["ca"]), "--tls-auth-clients", "no",
                      "--requirepass", REDIS_PASSWORD, "--save", "", "--appendonly", "no"], port)
    yield port
    stop_server(process)


@pytest.fixture(scope="module")
def mosquitto_with_password(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    if not (Path(MOSQUITTO).exists() and Path(MOSQUITTO_PASSWD).exists()):
        pytest.skip("mosquitto is not installed")
    where = tmp_path_factory.mktemp("mosquitto")
    passwords = where / "passwords"
    subprocess.run([MOSQUITTO_PASSWD, "-b", "-c", str(passwords), MQTT_USER, MQTT_PASSWORD], check=True,
                   capture_output=True)
    port = free_port()
    config = _mosquitto_config(where, "password", [
        f"listener {port} 127.0.0.1", "allow_anonymous false", f"password_file {passwords}"])
    process = start_server([MOSQUITTO, "-c", str(config)], port)
    yield port
    stop_server(process)


@pytest.fixture(scope="module")
def mosquitto_with_tls(tmp_path_factory: pytest.TempPathFactory, certs: dict[str, Path]) -> Iterator[int]:
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed")
    port = free_port()
    config = _mosquitto_config(tmp_path_factory.mktemp("mosquitto-tls"), "tls", [
        f"listener {port} 127.0.0.1", "allow_anonymous true", f"cafile {certs['ca']}",
        f"certfile {certs['cert']}", f"keyfile {certs['key']}"])
    process = start_server([MOSQUITTO, "-c", str(config)], port)
    yield port
    stop_server(process)


# -- redact_url -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://user:p%40ss@host:6380/1", "rediss://user:***@host:6380/1"),
        ("mqtt://alice:wonder@broker:1883", "mqtt://alice:***@broker:1883"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://user@host:6379", "redis://user@host:6379"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)
def test_redact_url_hides_only_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


async def test_empty_password_counts_as_unset() -> None:
    """compose passes ``${VOLCAST_REDIS_PASSWORD:-}``: empty must mean "no password", not AUTH ""."""
    settings = RedisSettings(url="redis://127.0.0.1:6379/0", password=_secret(""))
    await check_redis(settings)
    assert "password" not in redis_client(settings).connection_pool.connection_kwargs
    assert mqtt_credentials(MqttSettings(username="", password=_secret(""))) == (None, None)


def test_secrets_are_redacted_in_reprs() -> None:
    settings = RedisSettings(url="redis://127.0.0.1:6379/0", password=_secret("hunter2"))
    mqtt = MqttSettings(username="u", password=_secret("hunter3"))
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)
    assert "hunter3" not in repr(mqtt)
    assert "hunter2" not in repr(redis_client(settings))


# -- Redis password -----------------------------------------------------------------------------

@needs_redis
async def test_redis_right_password_connects(redis_with_password: int) -> None:
    url = f"redis://127.0.0.1:{redis_with_password}/0"
    await check_redis(RedisSettings(url=url, password=_secret(REDIS_PASSWORD)))
    # Settings win over a stale password written into the URL.
    stale = f"redis://:stale@127.0.0.1:{redis_with_password}/0"
    await check_redis(RedisSettings(url=stale, password=_secret(REDIS_PASSWORD)))
    async with redis_client(RedisSettings(url=stale, password=_secret(REDIS_PASSWORD))) as client:
        assert await client.ping()


@needs_redis
@pytest.mark.parametrize(
    ("password", "expected"),
    [
        (None, "requires a password: set VOLCAST_REDIS_PASSWORD"),
        ("wrong", "refused the password: set VOLCAST_REDIS_PASSWORD"),
    ],
)
async def test_redis_missing_or_wrong_password_says_what_to_set(
    redis_with_password: int, password: str | None, expected: str
) -> None:
    url = f"redis://127.0.0.1:{redis_with_password}/0"
    with pytest.raises(ConnectionProblem) as caught:
        await check_redis(RedisSettings(url=url, password=_secret(password)))
    assert str(caught.value).startswith(f"Redis at {url} ")
    assert expected in str(caught.value)
    assert REDIS_PASSWORD not in str(caught.value)


@needs_redis
async def test_redis_acl_user(redis_with_password: int) -> None:
    url = f"redis://127.0.0.1:{redis_with_password}/0"
    user = f"volcast-{uuid.uuid4().hex[:6]}"
    async with redis_client(RedisSettings(url=url, password=_secret(REDIS_PASSWORD))) as admin:
        await admin.acl_setuser(user, enabled=True, passwords=["+user-pw"], keys=["*"], commands=["+@all"])
    try:
        await check_redis(RedisSettings(url=url, username=user, password=_secret("user-pw")))
        expected = f"refused user '{user}' or its password: set VOLCAST_REDIS_USERNAME"
        with pytest.raises(ConnectionProblem, match=expected):
            await check_redis(RedisSettings(url=url, username=user, password=_secret("nope")))
    finally:
        async with redis_client(RedisSettings(url=url, password=_secret(REDIS_PASSWORD))) as admin:
            await admin.acl_deluser(user)


@needs_redis
def test_status_with_password_from_env_file(redis_with_password: int, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The compose way: the password comes from a mounted secret file, never from config.yml."""
    secret = tmp_path / "redis_password"
    secret.write_text(REDIS_PASSWORD + "\n", encoding="utf-8")
    config = tmp_path / "config.yml"
    config.write_text("exchanges: [{id: binance, symbols: [BTC/USDT]}]\n"
                      f"redis: {{url: 'redis://127.0.0.1:{redis_with_password}/0', key_prefix: t}}\n",
                      encoding="utf-8")
    parser = argparse.ArgumentParser()
    status.add_arguments(parser)
    args = parser.parse_args(["--config", str(config), "--json"])
    for name in ("VOLCAST_REDIS_URL", "VOLCAST_REDIS_PASSWORD", "VOLCAST_REDIS_USERNAME"):
        monkeypatch.delenv(name, raising=False)

    assert status.main(args) == 1
    err = capsys.readouterr().err
    assert "requires a password: set VOLCAST_REDIS_PASSWORD" in err

    monkeypatch.setenv("VOLCAST_REDIS_PASSWORD", "wrong")
    assert status.main(args) == 1
    assert "refused the password" in capsys.readouterr().err

    monkeypatch.delenv("VOLCAST_REDIS_PASSWORD")
    monkeypatch.setenv("VOLCAST_REDIS_PASSWORD_FILE", str(secret))
    assert load_settings(config).redis.password is not None
    assert status.main(args) == 0
    out = capsys.readouterr().out
    assert orjson.loads(out)["redis"]["url"] == f"redis://127.0.0.1:{redis_with_password}/0"
    assert REDIS_PASSWORD not in out


# -- MQTT password ------------------------------------------------------------------------------

@needs_mosquitto
async def test_mqtt_right_password_round_trip(mosquitto_with_password: int) -> None:
    settings = MqttSettings(url=f"mqtt://127.0.0.1:{mosquitto_with_password}", username=MQTT_USER,
                            password=_secret(MQTT_PASSWORD))
    await check_mqtt(settings)
    topic = f"volcast-test-{uuid.uuid4().hex[:8]}/security"
    async with mqtt_client(settings) as client:
        await client.subscribe(topic, qos=1)
        await client.publish(topic, b"ok", qos=1)
        message: aiomqtt.Message = await asyncio.wait_for(anext(aiter(client.messages)), 10)
        assert message.payload == b"ok"
    # Credentials written into the URL are used when the settings give none.
    await check_mqtt(MqttSettings(url=f"mqtt://{MQTT_USER}:{MQTT_PASSWORD}@127.0.0.1:{mosquitto_with_password}"))


@needs_mosquitto
@pytest.mark.parametrize(
    ("username", "password", "expected"),
    [
        (None, None, "requires a user name and password: set VOLCAST_MQTT_USERNAME and VOLCAST_MQTT_PASSWORD"),
        (MQTT_USER, "wrong", "refused the user name or password: set VOLCAST_MQTT_USERNAME"),
    ],
)
async def test_mqtt_missing_or_wrong_password_says_what_to_set(
    mosquitto_with_password: int, username: str | None, password: str | None, expected: str
) -> None:
    url = f"mqtt://127.0.0.1:{mosquitto_with_password}"
    with pytest.raises(ConnectionProblem) as caught:
        await check_mqtt(MqttSettings(url=url, username=username, password=_secret(password)))
    assert str(caught.value).startswith(f"MQTT broker at {url} ")
    assert expected in str(caught.value)
    assert "wrong" not in str(caught.value)


async def _published_through_forecaster(settings: MqttSettings, payload: bytes) -> bytes:
    """One payload through the forecaster's own publishing connection, as a subscriber gets it."""
    topic = f"volcast-test-{uuid.uuid4().hex[:8]}/publisher"
    publisher = Publisher(settings, backoff_initial_s=0.05, backoff_max_s=0.2)
    running = asyncio.create_task(publisher.run())
    try:
        async with mqtt_client(settings) as client:
            await client.subscribe(topic, qos=1)
            await asyncio.wait_for(publisher.published(publisher.submit([(topic, payload)])), 10)
            message: aiomqtt.Message = await asyncio.wait_for(anext(aiter(client.messages)), 10)
            assert isinstance(message.payload, bytes)
            return message.payload
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


@needs_mosquitto
async def test_forecaster_publishes_with_a_password(mosquitto_with_password: int) -> None:
    settings = MqttSettings(url=f"mqtt://127.0.0.1:{mosquitto_with_password}", username=MQTT_USER,
                            password=_secret(MQTT_PASSWORD))
    assert await _published_through_forecaster(settings, b"with a password") == b"with a password"


@needs_mosquitto
async def test_forecaster_connection_refused_names_the_reason(mosquitto_with_password: int) -> None:
    settings = MqttSettings(url=f"mqtt://127.0.0.1:{mosquitto_with_password}", username=MQTT_USER,
                            password=_secret("wrong"))
    with pytest.raises(ConnectRefusedError) as caught:
        await Connection.open(settings, client_id=None, on_confirmed=lambda mid: None, timeout_s=5)
    assert caught.value.code in (4, 5)  # mosquitto 2 answers 5 (not authorised) to a wrong password
    assert "wrong" not in str(caught.value)


@needs_mosquitto
async def test_mqtt_unreachable_says_what_to_check() -> None:
    url = f"mqtt://u:hunter2@127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionProblem) as caught:
        await check_mqtt(MqttSettings(url=url))
    assert str(caught.value).startswith("cannot reach MQTT broker at mqtt://u:***@127.0.0.1:")
    assert "VOLCAST_MQTT_URL" in str(caught.value) and "hunter2" not in str(caught.value)


# -- TLS ----------------------------------------------------------------------------------------

@needs_redis
@needs_openssl
async def test_redis_tls_with_ca_file(redis_with_tls: int, certs: dict[str, Path]) -> None:
    tls = TlsSettings(enabled=True, ca_file=certs["ca"])
    for url in (f"redis://127.0.0.1:{redis_with_tls}/0", f"rediss://127.0.0.1:{redis_with_tls}/0"):
        settings = RedisSettings(url=url, password=_secret(REDIS_PASSWORD), tls=tls)
        await check_redis(settings)
        async with redis_client(settings) as client:
            await client.set("volcast-tls-check", b"1", px=10_000)
            assert await client.get("volcast-tls-check") == b"1"


@needs_redis
@needs_openssl
async def test_redis_tls_without_ca_file_fails_clearly(redis_with_tls: int) -> None:
    url = f"rediss://127.0.0.1:{redis_with_tls}/0"
    with pytest.raises(ConnectionProblem, match=r"TLS handshake failed .*set redis\.tls\.ca_file"):
        await check_redis(RedisSettings(url=url, password=_secret(REDIS_PASSWORD)), timeout_s=3)
    # A plain client against a TLS-only port never gets an answer: the message points at rediss://.
    with pytest.raises(ConnectionProblem, match=r"rediss://"):
        await check_redis(RedisSettings(url=f"redis://127.0.0.1:{redis_with_tls}/0", password=_secret(REDIS_PASSWORD)),
                          timeout_s=1)


@needs_mosquitto
@needs_openssl
async def test_mqtt_tls_with_ca_file(mosquitto_with_tls: int, certs: dict[str, Path]) -> None:
    tls = TlsSettings(enabled=True, ca_file=certs["ca"])
    settings = MqttSettings(url=f"mqtts://127.0.0.1:{mosquitto_with_tls}", tls=tls)
    await check_mqtt(settings)
    topic = f"volcast-test-{uuid.uuid4().hex[:8]}/tls"
    async with mqtt_client(settings) as client:
        await client.subscribe(topic, qos=1)
        await client.publish(topic, b"over tls", qos=1)
        message: aiomqtt.Message = await asyncio.wait_for(anext(aiter(client.messages)), 10)
        assert message.payload == b"over tls"


@needs_mosquitto
@needs_openssl
async def test_forecaster_publishes_over_tls(mosquitto_with_tls: int, certs: dict[str, Path]) -> None:
    settings = MqttSettings(url=f"mqtts://127.0.0.1:{mosquitto_with_tls}", tls=TlsSettings(enabled=True,
                                                                                           ca_file=certs["ca"]))
    assert await _published_through_forecaster(settings, b"over tls") == b"over tls"


@needs_mosquitto
@needs_openssl
async def test_mqtt_tls_without_ca_file_fails_clearly(mosquitto_with_tls: int) -> None:
    with pytest.raises(ConnectionProblem, match=r"TLS handshake failed .*set mqtt\.tls\.ca_file"):
        await check_mqtt(MqttSettings(url=f"mqtts://127.0.0.1:{mosquitto_with_tls}"), timeout_s=3)


@pytest.mark.parametrize("verb", ["stream", "refit"])
def test_services_refuse_to_start_with_a_wrong_redis_password(
    redis_with_password: int, tmp_path: Path, verb: str
) -> None:
    """A wrong credential ends a service at start-up with one message saying what to set."""
    config = tmp_path / "config.yml"
    config.write_text(
        "exchanges:\n  - id: binance\n    symbols: [BTC/USDT]\n"
        f"redis: {{url: 'redis://127.0.0.1:{redis_with_password}/0'}}\n",
        encoding="utf-8",
    )
    env = {**os.environ, "VOLCAST_REDIS_PASSWORD": "not-the-password"}
    result = subprocess.run(
        [sys.executable, "-m", "volcast.cli", verb, "--config", str(config)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "refused the password: set VOLCAST_REDIS_PASSWORD" in result.stderr
    assert "not-the-password" not in result.stderr and "Traceback" not in result.stderr
