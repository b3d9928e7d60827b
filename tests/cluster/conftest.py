"""Fixtures of the multi-host tests: one cluster of separate hosts per test module.

`cluster` gives each test the module's Redis host and Ray head (started once, 15-60 s); the
workers, dispatchers and clients a test adds leave when it ends, and what it killed or cut of
the two is started again or healed (`Cluster.reset`). The tests skip, saying why, only where
this machine cannot build network namespaces (not root, no `ip netns`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.harness import Cluster
from tests.cluster.network import Network, unavailable_reason


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with Network() as built:
        yield built


@pytest.fixture(scope="module")
def module_cluster(network: Network) -> Cluster:
    cluster = Cluster(network)
    cluster.start()
    return cluster


@pytest.fixture
def cluster(module_cluster: Cluster) -> Iterator[Cluster]:
    yield module_cluster
    module_cluster.reset()
