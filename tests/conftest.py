"""Shared test setup: one CPU thread per test process (CI has 2 cores).

`make test` runs two pytest processes at once. Tests on Ray (marked `ray`) wait mostly on Ray
(actors starting, reports collected) and share one local Ray per process, so they run in one
process, in file order. The others mostly compute, and run in the second process meanwhile.
The multi-host tests (`multihost`, tests/cluster) come last, alone: they build a cluster of hosts
of their own, with leases of a few seconds. Run beside the Ray tests, each starved the other:
in CI a sweep on the local Ray waited 300 s for a worker process, and a scenario lost a relay.
"""

from __future__ import annotations

import torch

pytest_plugins = ["tests.redis_fixtures", "tests.store_fixtures", "tests.ray_fixtures"]

torch.set_num_threads(1)
