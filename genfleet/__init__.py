"""genfleet's Python client: `from genfleet import Client`.

client = Client()                       # as the CLI connects
job = client.submit("jobs/examples/pixelcnn_digits.yaml")
job.wait()                              # a progress bar, in a terminal or in Jupyter
job.metrics()                           # a pandas DataFrame, one row per epoch
job.samples()                           # the latest epoch's grids as PIL images
"""

from __future__ import annotations

from genfleet.client import Client, Job, JobPage, Trial
from genfleet.errors import (
    EmbeddedRedisError,
    InvalidTransition,
    JobNotFound,
    JobTimeout,
    NotASweep,
    SpecError,
    SpecFileError,
)
from jobs.records import JobRecord, JobStatus
from jobs.spec import JobSpec

__all__ = [
    "Client",
    "EmbeddedRedisError",
    "InvalidTransition",
    "Job",
    "JobNotFound",
    "JobPage",
    "JobRecord",
    "JobSpec",
    "JobStatus",
    "JobTimeout",
    "NotASweep",
    "SpecError",
    "SpecFileError",
    "Trial",
]
