"""A real local Redis Cluster for the tests: six ``redis-server`` processes (three masters, three
replicas) on free ports in a temporary directory, joined by ``redis-cli --cluster create``.

Started once per test session, and only when a test asks for it (``redis_cluster``); the tests
keep apart by key prefix, as on the shared single Redis. ``redis_section`` is the settings'
``redis`` section for either deployment, so that a test parametrised over ``redis_mode`` runs the
same code against both.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servers import free_port, start_server, stop_server

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
HAS_CLUSTER_TOOLS = REDIS_SERVER is not None and REDIS_CLI is not None
SINGLE_URL = "redis://127.0.0.1:6379/0"
MASTERS = 3


@dataclass
class LocalCluster:
    ports: list[int]
    directory: Path
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}"

    def cli(self, port: int, *args: str, timeout_s: float = 30.0) -> str:
        assert REDIS_CLI is not None
        done = subprocess.run([REDIS_CLI, "-p", str(port), *args], capture_output=True, timeout=timeout_s,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli {' '.join(args)} on {port}: {done.stdout.decode()} {done.stderr.decode()}")
        return done.stdout.decode()

    def start_node(self, port: int) -> None:
        assert REDIS_SERVER is not None
        node_dir = self.directory / str(port)
        node_dir.mkdir(exist_ok=True)
        self.processes[port] = start_server([
            REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
            "--save", "", "--appendonly", "no", "--protected-mode", "no",
        ], port)

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Until every node says cluster_state:ok and knows all six nodes, and every replica's link
        to its master is up (until the first sync ends a master's WAIT blocks: the first WAIT of a
        test measured 5.6 s)."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = [self.cli(port, "cluster", "info") for port in self.ports]
            if all("cluster_state:ok" in s and f"cluster_known_nodes:{len(self.ports)}" in s for s in states):
                links = [self.cli(port, "info", "replication") for port in self.ports]
                if all("role:master" in r or "master_link_status:up" in r for r in links):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster is not ok after {timeout_s:.0f} s: {states[0]}")
            time.sleep(0.1)

    def stop(self) -> None:
        for process in self.processes.values():
            stop_server(process)
        self.processes.clear()


def _can_bind(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_cluster() -> LocalCluster:
    ports: list[int] = []
    while len(ports) < 2 * MASTERS:  # a cluster node also listens on port + 10000 (its bus)
        port = free_port()
        if port not in ports and port + 10000 < 65536 and _can_bind(port + 10000):
            ports.append(port)
    cluster = LocalCluster(ports, Path(tempfile.mkdtemp(prefix="volcast-cluster-")))
    try:
        for port in ports:
            cluster.start_node(port)
        cluster.cli(ports[0], "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                    "--cluster-replicas", "1", "--cluster-yes", timeout_s=60)
        cluster.wait_ok()
    except BaseException:
        cluster.stop()
        shutil.rmtree(cluster.directory, ignore_errors=True)
        raise
    return cluster


def cluster_session() -> Iterator[LocalCluster]:
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.directory, ignore_errors=True)


def redis_section(mode: str, cluster: LocalCluster | None, **extra: Any) -> dict[str, Any]:
    """The settings' ``redis`` section of a test run on ``mode`` ("single" or "cluster")."""
    if mode == "cluster":
        assert cluster is not None
        return {"url": cluster.url, "cluster": True, **extra}
    return {"url": SINGLE_URL, **extra}
