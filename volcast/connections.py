"""Clients for Redis and MQTT built from settings: credentials, TLS and the socket options we measured.

Every service opens its connections here, so that password, TLS and TCP_NODELAY handling is
written once. ``check_redis`` / ``check_mqtt`` turn a failed first connection into a
``ConnectionProblem`` whose message says what to fix, and ``redact_url`` is the only way a
connection URL may be printed.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

import aiomqtt
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from pydantic import SecretStr
from redis.asyncio.cluster import ClusterNode, RedisCluster

from volcast.aio import backport_wait_for
from volcast.settings import MqttSettings, RedisSettings, TlsSettings

backport_wait_for()  # before any client exists: redis-py and aiomqtt lose cancellations without it

REDACTED = "***"


class ConnectionProblem(Exception):  # noqa: N818 - the name the other parts code against
    """Redis or the MQTT broker cannot be used; the message names the (redacted) URL and what to check."""


class ServerUnreachable(ConnectionProblem):
    """Nothing answered: may be an outage that passes, unlike refused credentials or a TLS mismatch."""


def redact_url(url: str) -> str:
    """``redis://user:secret@host:6379/0`` -> ``redis://user:***@host:6379/0``; other URLs unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED  # unparseable: it may still hold a secret
    if parts.password is None:
        return url
    userinfo = f"{parts.username}:{REDACTED}" if parts.username else f":{REDACTED}"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


def _secret(value: SecretStr | None) -> str | None:
    """The secret's text; an empty one counts as unset, as compose writes ``${VAR:-}`` for "none"."""
    if value is None or not value.get_secret_value():
        return None
    return value.get_secret_value()


def _without_credentials(parts: SplitResult) -> str:
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    if tls.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _redis_uses_tls(settings: RedisSettings) -> bool:
    return settings.tls.enabled or settings.url.startswith("rediss://")


def redis_client(settings: RedisSettings, **overrides: Any) -> aioredis.Redis:
    """An asyncio Redis client (hiredis parser when installed); not connected until first use.

    Credentials in ``settings`` (config or VOLCAST_REDIS_*) win over any written into the URL:
    redis-py would otherwise let the URL's password silently override them.
    """
    options: dict[str, Any] = {"decode_responses": False, "health_check_interval": 10}
    parts = urlsplit(settings.url)
    url = settings.url
    if _secret(settings.password) is not None or settings.username:
        url = _without_credentials(parts)
        username = settings.username or (unquote(parts.username) if parts.username else None)
        password = _secret(settings.password) or (unquote(parts.password) if parts.password else None)
        if username:
            options["username"] = username
        if password is not None:
            options["password"] = password
    if _redis_uses_tls(settings):
        if parts.scheme == "unix":
            raise ConnectionProblem(
                f"Redis at {redact_url(settings.url)}: TLS over a unix socket is not supported; "
                "set redis.tls.enabled to false or use a rediss://host:port URL"
            )
        # redis-py selects its TLS connection class from the scheme; an ``ssl=True`` keyword
        # would reach the connection class and fail there.
        url = "rediss://" + url.split("://", 1)[1]
        if settings.tls.ca_file:
            options["ssl_ca_certs"] = str(settings.tls.ca_file)
        if settings.tls.cert_file:
            options["ssl_certfile"] = str(settings.tls.cert_file)
        if settings.tls.key_file:
            options["ssl_keyfile"] = str(settings.tls.key_file)
        if settings.tls.insecure:
            options["ssl_cert_reqs"] = "none"
            options["ssl_check_hostname"] = False
    options.update(overrides)
    if settings.cluster:
        return _cluster_client(settings, url, options)
    return aioredis.Redis.from_url(url, **options)


def _cluster_client(settings: RedisSettings, url: str, options: dict[str, Any]) -> aioredis.Redis:
    """redis-py's cluster client: it learns the slot map from any node it reaches (``url``, then
    ``cluster_nodes``), routes each command by its key's slot and follows MOVED/ASK and failovers.

    Typed as ``aioredis.Redis``: it answers every command volcast sends with the same signature
    and reply; what a cluster refuses (multi-key commands and scripts over several slots) volcast
    does not send (docs/operations.md, "Redis Cluster"), and ``is_cluster`` tells the few places
    that read differently on a cluster.
    """
    if settings.cluster_nodes:
        extra = []
        for node in settings.cluster_nodes:
            host, _, port = node.rpartition(":")
            extra.append(ClusterNode(host, int(port)))
        parts = urlsplit(url)
        options["startup_nodes"] = [ClusterNode(parts.hostname or "127.0.0.1", parts.port or 6379), *extra]
    return cast(aioredis.Redis, _StreamRoutingCluster.from_url(url, **options))


_STREAM_READS = frozenset({"XREADGROUP", "XREAD"})


class _StreamRoutingCluster(RedisCluster):
    """redis-py's cluster client, routing XREADGROUP and XREAD by the streams named after STREAMS.

    Their keys follow a keyword, which redis-py does not parse: it asked a node for them (COMMAND
    GETKEYS) before every read, a second round trip for each of a forecaster's event reads, idle
    (one blocking read per shard every block period) as busy (benchmarks/scale.py). Found here
    the way Redis finds them; anything else (several slots, a malformed read) goes through
    redis-py's own routing, which raises as before.
    """

    async def _determine_slot(self, command: str, *args: Any) -> int:
        if str(command).upper() in _STREAM_READS:
            keys = _streams_of(args, skip=3 if str(command).upper() == "XREADGROUP" else 0)
            if keys:
                slots = {self.keyslot(key) for key in keys}
                if len(slots) == 1:
                    return slots.pop()
        return await super()._determine_slot(command, *args)


def _streams_of(args: tuple[Any, ...], skip: int) -> list[Any]:
    """The stream keys of an XREADGROUP / XREAD's arguments: the first half after STREAMS, looked
    for past the first ``skip`` arguments (XREADGROUP's GROUP group consumer), as Redis does."""
    for i in range(skip, len(args)):
        arg = args[i]
        word = arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)
        if word.upper() == "STREAMS":
            rest = args[i + 1:]
            return list(rest[:len(rest) // 2]) if rest and len(rest) % 2 == 0 else []
    return []


def is_cluster(redis: object) -> bool:
    """True for a client of ``redis_client`` on a Redis Cluster."""
    return isinstance(redis, RedisCluster)


def mqtt_credentials(settings: MqttSettings) -> tuple[str | None, str | None]:
    """Username and password: from settings (config or VOLCAST_MQTT_*), else from the URL's userinfo."""
    parts = urlsplit(settings.url)
    username = settings.username or (unquote(parts.username) if parts.username else None)
    password = _secret(settings.password) or (unquote(parts.password) if parts.password else None)
    return username, password


@dataclass(frozen=True, slots=True)
class MqttConnectionOptions:
    """Where and how to connect to the broker: what aiomqtt's client and the forecaster's own
    publishing connection (forecaster/mqtt_wire.py) both take from the settings."""

    host: str
    port: int
    username: str | None
    password: str | None
    tls: ssl.SSLContext | None  # None: plain TCP


def mqtt_connection_options(settings: MqttSettings) -> MqttConnectionOptions:
    uses_tls = settings.tls.enabled or settings.url.startswith("mqtts://")
    username, password = mqtt_credentials(settings)
    return MqttConnectionOptions(settings.host, settings.port, username, password,
                                 _ssl_context(settings.tls) if uses_tls else None)


def mqtt_client(settings: MqttSettings, *, client_id: str | None = None, **overrides: Any) -> aiomqtt.Client:
    """An aiomqtt client; use as ``async with``.

    TCP_NODELAY matters: without it on both sides the first message after a subscribe took
    about 42 ms instead of 0.3 ms (findings.md).
    """
    connection = mqtt_connection_options(settings)
    options: dict[str, Any] = {
        "hostname": connection.host,
        "port": connection.port,
        "username": connection.username,
        "password": connection.password,
        "identifier": client_id or settings.client_id,
        "tls_context": connection.tls,
        "socket_options": [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    }
    if connection.tls is not None and settings.tls.insecure:
        options["tls_insecure"] = True
    options.update(overrides)
    return aiomqtt.Client(**options)


def _is_tls_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError) or "SSL" in str(seen) or "certificate" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def _is_cluster_node(client: aioredis.Redis) -> bool:
    try:
        info: Any = await client.info("cluster")
    except redis_errors.ResponseError:  # an ACL without INFO: the first MOVED will say so
        return False
    return str(info.get("cluster_enabled", 0)) == "1"


async def check_redis(settings: RedisSettings, *, timeout_s: float = 5.0) -> None:
    """PING Redis once; a failure raises ConnectionProblem saying which setting to check."""
    where = f"Redis at {redact_url(settings.url)}"
    client = redis_client(settings, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        await client.ping()
        if not settings.cluster and await _is_cluster_node(client):
            raise ConnectionProblem(
                f"{where} is a node of a Redis Cluster: set redis.cluster to true (VOLCAST_REDIS_CLUSTER=true), "
                "or every command on a key of another node would be refused (MOVED)")
    except redis_errors.AuthenticationError as exc:
        text = str(exc)
        if "without any password configured" in text:
            raise ConnectionProblem(
                f"{where} has no password set but we sent one: unset VOLCAST_REDIS_PASSWORD "
                "(and redis.password), or give the server a password (requirepass)"
            ) from None
        if _secret(settings.password) is None and not urlsplit(settings.url).password:
            raise ConnectionProblem(
                f"{where} requires a password: set VOLCAST_REDIS_PASSWORD (or VOLCAST_REDIS_PASSWORD_FILE)"
            ) from None
        if settings.username:
            raise ConnectionProblem(
                f"{where} refused user {settings.username!r} or its password: set VOLCAST_REDIS_USERNAME "
                "and VOLCAST_REDIS_PASSWORD (or VOLCAST_REDIS_PASSWORD_FILE) to an ACL user of the server"
            ) from None
        raise ConnectionProblem(
            f"{where} refused the password: set VOLCAST_REDIS_PASSWORD (or VOLCAST_REDIS_PASSWORD_FILE) "
            "to the server's requirepass"
        ) from None
    except redis_errors.ResponseError as exc:
        if "NOAUTH" in str(exc) or "NOPERM" in str(exc):
            raise ConnectionProblem(
                f"{where} refused access ({exc}): set VOLCAST_REDIS_USERNAME / VOLCAST_REDIS_PASSWORD "
                "to a user allowed to run the commands volcast needs"
            ) from None
        raise ConnectionProblem(f"{where} answered PING with an error: {exc}") from None
    except redis_errors.RedisClusterException as exc:
        if "not enabled" in str(exc) or "disabled" in str(exc):
            raise ConnectionProblem(
                f"{where} is not a Redis Cluster ({exc}): set redis.cluster to false (or point redis.url at "
                "a node of the cluster)") from None
        raise ServerUnreachable(
            f"cannot reach the Redis Cluster at {where} ({exc}): are its nodes running, is "
            "cluster_state ok (redis-cli -p PORT cluster info), and are redis.url / redis.cluster_nodes right?"
        ) from None
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
        if _is_tls_failure(exc):
            raise ConnectionProblem(
                f"{where}: TLS handshake failed ({exc}): set redis.tls.ca_file to the CA that signed "
                "the server's certificate (or use redis:// if the server does not speak TLS)"
            ) from None
        tls_hint = (
            "a server without TLS needs redis:// and redis.tls.enabled false"
            if _redis_uses_tls(settings)
            else "a TLS-only server needs rediss://"
        )
        raise ServerUnreachable(
            f"cannot reach {where} ({exc}): is Redis running there, and are redis.url / VOLCAST_REDIS_URL "
            f"right? ({tls_hint})"
        ) from None
    finally:
        await client.aclose()


async def check_mqtt(settings: MqttSettings, *, timeout_s: float = 5.0) -> None:
    """Connect to the broker once; a failure raises ConnectionProblem saying which setting to check."""
    where = f"MQTT broker at {redact_url(settings.url)}"
    try:
        async with mqtt_client(settings, timeout=timeout_s):
            pass
    except aiomqtt.MqttCodeError as exc:
        rc = getattr(exc.rc, "value", exc.rc)
        if rc in (4, 5, 134, 135):  # MQTT 3.1.1: bad user name or password / not authorised; v5: 0x86/0x87
            username, _ = mqtt_credentials(settings)
            hint = (
                "set VOLCAST_MQTT_USERNAME and VOLCAST_MQTT_PASSWORD (or *_FILE) to a user in the "
                "broker's password file"
            )
            what = "refused the user name or password" if username else "requires a user name and password"
            raise ConnectionProblem(f"{where} {what}: {hint}") from None
        raise ConnectionProblem(f"{where} refused the connection ({exc})") from None
    except aiomqtt.MqttError as exc:
        if _is_tls_failure(exc):
            raise ConnectionProblem(
                f"{where}: TLS handshake failed ({exc}): set mqtt.tls.ca_file to the CA that signed the "
                "broker's certificate (or use mqtt:// if the listener does not speak TLS)"
            ) from None
        tls_hint = (
            "a listener without TLS needs mqtt:// and mqtt.tls.enabled false"
            if settings.tls.enabled or settings.url.startswith("mqtts://")
            else "a TLS listener needs mqtts://"
        )
        raise ServerUnreachable(
            f"cannot reach {where} ({exc}): is the broker running there, and are mqtt.url / "
            f"VOLCAST_MQTT_URL right? ({tls_hint})"
        ) from None
