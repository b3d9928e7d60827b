"""The runner name of a job run directly by a pre-started process (cluster/warm_runner.py).

Any dispatcher asks by a job's runner name (cluster/job_runner.py's `runner_name`) whether its
run still lives and kills the run by it. A pre-started process was named before its job was
known, so a `RunName` actor holds the name on the head for it, and the process exits as soon
as its `RunName` is gone. This module imports nothing but Ray, so that it starts in a moment.
"""

from __future__ import annotations

import asyncio

import ray


@ray.remote(num_cpus=0, max_restarts=0)
class RunName:
    async def until_killed(self) -> None:
        await asyncio.Event().wait()
