"""Write what a run's workers relayed (metrics, images, logs, checkpoints) into the job store."""

from __future__ import annotations

import logging
from typing import Any

from jobs.store import JobStore

log = logging.getLogger("genfleet.relay")


def write_messages(
    store: JobStore, job_id: str, messages: list[tuple[str, dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Store every message; return the worker announcements (rank, pid, node) among them."""
    workers = []
    for kind, payload in messages:
        trial = payload.get("trial")
        if kind == "metrics":
            store.append_metrics(job_id, payload["metrics"], trial=trial)
        elif kind == "image":
            store.put_image(job_id, payload["name"], payload["epoch"], payload["png"], trial=trial)
        elif kind == "log":
            prefix = f"[{trial}] " if trial else ""
            store.append_log(job_id, prefix + payload["line"])
        elif kind == "checkpoint":
            store.add_checkpoint(job_id, payload["epoch"], payload["path"], trial=trial)
        elif kind == "trial":
            store.put_trial(job_id, trial, payload["info"])
        elif kind == "info":
            store.append_event(
                job_id, "run info: " + ", ".join(f"{k}={v}" for k, v in payload["info"].items())
            )
        elif kind == "worker":
            workers.append(payload)
        elif kind in ("placement_group", "controller"):
            pass  # for the dispatcher, to stop the run for good; nothing to store
        elif kind == "fatal":
            prefix = f"[{trial}] " if trial else ""
            store.append_log(job_id, f"{prefix}run stopped: {payload['error']}")
        else:
            log.warning("job %s: ignoring unknown relay message %r", job_id, kind)
    return workers
