"""Shared test setup: one CPU thread per test process (CI has 2 cores)."""

from __future__ import annotations

import torch

pytest_plugins = ["tests.redis_fixtures", "tests.ray_fixtures"]

torch.set_num_threads(1)
