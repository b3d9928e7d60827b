"""Where each page lives, and links between them that survive a reload (query parameters)."""

from __future__ import annotations

from urllib.parse import urlencode

SUBMIT_PAGE = "views/submit.py"
JOBS_PAGE = "views/jobs.py"
JOB_PAGE = "views/job.py"
SWEEP_PAGE = "views/sweep.py"
COMPARE_PAGE = "views/compare.py"
CLUSTER_PAGE = "views/cluster.py"


def job_query(job_id: str, trial: str | None = None) -> dict[str, str]:
    return {"job": job_id} | ({"trial": trial} if trial else {})


def job_url(job_id: str, trial: str | None = None) -> str:
    """A link to the Job view, relative so it also works under a proxy's path prefix."""
    return f"job?{urlencode(job_query(job_id, trial))}"
