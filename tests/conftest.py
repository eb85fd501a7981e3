"""Fixtures shared by several test files: the local Redis Cluster (tests/cluster.py), started
once per session and only if a test runs on it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from cluster import HAS_CLUSTER_TOOLS, LocalCluster, cluster_session, redis_section


def _needs_cluster_tools() -> None:
    if not HAS_CLUSTER_TOOLS:
        pytest.fail("redis-server and redis-cli are needed for the Redis Cluster tests: "
                    "apt-get install redis-server redis-tools (scripts/services.sh installs them)")


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    _needs_cluster_tools()
    yield from cluster_session()


@pytest.fixture
def own_cluster() -> Iterator[LocalCluster]:
    """A cluster of the test's own, for a test that kills or stops its nodes."""
    _needs_cluster_tools()
    yield from cluster_session()


@pytest.fixture(params=["single", "cluster"])
def redis_mode(request: pytest.FixtureRequest) -> str:
    """Run the test on the shared single Redis and on the local Redis Cluster."""
    mode: str = request.param
    return mode


@pytest.fixture
def redis_config(redis_mode: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The settings' ``redis`` section (without key_prefix) of the test's ``redis_mode``."""
    cluster = request.getfixturevalue("redis_cluster") if redis_mode == "cluster" else None
    return redis_section(redis_mode, cluster)
