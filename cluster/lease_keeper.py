"""Renews a dispatcher's leases on a thread of its own, so nothing slow in a tick lets one lapse.

A tick may wait on Ray: the last drain of a finished run, a stop that waits for controllers to
abort, a stale runner to kill. None of that may hold up a renewal, or another dispatcher would
take over a healthy run. The keeper renews every lease it holds every third of a lease period
and reports each run it no longer holds, once, to `on_lost` and through `lost`:
- the queue refused the renewal (LeaseLost): another dispatcher owns the job now;
- no renewal went through for a whole lease period (Redis unreachable): the lease has lapsed
  on Redis's clock too, since each renewal is timed from when it was sent, so the run must stop
  before another dispatcher claims the job.

Renewals run on one thread and may hang on an unreachable Redis for a client timeout or more;
lapses are noticed on another, which never waits on Redis, so a cut-off dispatcher stops its
runs on time however long its Redis commands hang.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from jobs.queue import JobQueue
from jobs.records import Lease, LeaseLost

log = logging.getLogger("genfleet.dispatcher")


@dataclass
class _Held:
    lease: Lease
    renewed_at: float  # when the last renewal that went through was sent (monotonic)
    lost: str | None = None  # why the lease is no longer ours


class LeaseKeeper:
    def __init__(
        self,
        queue: JobQueue,
        lease_seconds: float,
        on_lost: Callable[[Lease, str], None] = lambda lease, reason: None,
    ) -> None:
        """`on_lost(lease, reason)` runs on a keeper's thread, once per lost lease: it must not
        wait on Redis, which may be the reason."""
        self.queue = queue
        self.lease_seconds = lease_seconds
        self.on_lost = on_lost
        self._held: dict[str, _Held] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._renew_all, name="lease-renewer", daemon=True),
            threading.Thread(target=self._watch, name="lease-watcher", daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.lease_seconds)

    def hold(self, lease: Lease, claimed_at: float) -> None:
        """Keep renewing `lease`, whose claim was sent at `claimed_at` (monotonic)."""
        with self._lock:
            self._held[lease.job_id] = _Held(lease, claimed_at)

    def let_go(self, job_id: str) -> None:
        with self._lock:
            self._held.pop(job_id, None)

    def lost(self, job_id: str) -> str | None:
        """Why the lease on `job_id` is no longer ours, or None while we hold it."""
        with self._lock:
            held = self._held.get(job_id)
        if held is None:
            return None
        self._check_lapse(held)
        return held.lost

    def _live(self) -> list[_Held]:
        with self._lock:
            return [held for held in self._held.values() if held.lost is None]

    def _renew_all(self) -> None:
        while not self._stop.wait(self.lease_seconds / 6):
            for held in self._live():
                if time.monotonic() - held.renewed_at >= self.lease_seconds / 3:
                    self._renew(held)

    def _renew(self, held: _Held) -> None:
        sent = time.monotonic()
        try:
            self.queue.renew_lease(held.lease, self.lease_seconds)
        except LeaseLost:
            self._lose(held, "lost the lease; another dispatcher owns the job now")
        except Exception as exc:  # Redis unreachable: the lease runs down, the watcher sees it
            log.warning("job %s: lease renewal failed (%s)", held.lease.job_id, exc)
        else:
            held.renewed_at = sent

    def _watch(self) -> None:
        while not self._stop.wait(self.lease_seconds / 12):
            for held in self._live():
                self._check_lapse(held)

    def _check_lapse(self, held: _Held) -> None:
        if time.monotonic() - held.renewed_at >= self.lease_seconds:
            self._lose(held, f"could not renew the lease for {self.lease_seconds:g} s")

    def _lose(self, held: _Held, reason: str) -> None:
        with self._lock:
            # A renewal sent just before `let_go` or a new `hold` of the job answers for a
            # lease no longer held: it must not stop the run of the one held now.
            if held.lost is not None or self._held.get(held.lease.job_id) is not held:
                return
            held.lost = reason
        try:
            self.on_lost(held.lease, reason)
        except Exception:  # the tick stops the run all the same, through `lost`
            log.exception("job %s: stopping the run of a lost lease failed", held.lease.job_id)
