"""One job's trouble stays that job's: a dead relay, a flood of messages, a lease taken over, a
relay that hangs while its dispatcher stops.

A real dispatcher thread on the session's local Ray, against a real Redis (genfleet issue 11,
items 2 and 3).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import suppress

import pytest
import ray

from cluster.dispatcher import STOP_SECONDS, Dispatcher
from cluster.job_runner import is_running_on_ray
from jobs.keys import LOG_LINES_KEPT, RUN_WRITES_PER_TICK
from jobs.messages import Log
from jobs.records import JobStatus
from jobs.spec import validate_spec_dict
from tests.ray_fixtures import Stack
from tests.test_ray_jobs import digits_spec

pytestmark = pytest.mark.ray


def submit_long_job(stack: Stack, name: str, epochs: int = 8) -> str:
    spec = digits_spec(name=name, train__epochs=epochs, train__max_steps_per_epoch=15)
    spec["scaling"] = {"num_workers": 1, "cpus_per_worker": 1, "max_failures": 0}
    return stack.queue.submit(validate_spec_dict(spec))


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.1)


def events_of(stack: Stack, job_id: str) -> list[str]:
    return [event.message for event in stack.store.events(job_id)]


def test_job_whose_relay_died_is_handed_back_and_the_other_job_runs_on(
    stack: Stack, dispatcher
) -> None:
    broken, healthy = submit_long_job(stack, "broken"), submit_long_job(stack, "healthy")
    wait_until(lambda: {broken, healthy} <= set(dispatcher.active), 120, "both jobs to be running")
    ray.kill(dispatcher.active[broken].relay, no_restart=True)

    record = stack.wait_final(broken, timeout=240)
    assert record.status == JobStatus.SUCCEEDED, record.last_error
    # Handed back as an interruption, then resumed: no attempt of the run was used.
    assert (record.attempts, record.claims, record.interruptions) == (1, 2, 1)
    assert any("its relay actor was lost" in message for message in events_of(stack, broken))
    other = stack.wait_final(healthy, timeout=240)
    assert other.status == JobStatus.SUCCEEDED, other.last_error
    assert other.claims == 1  # never disturbed
    assert [row["epoch"] for row in stack.store.metrics(healthy)] == list(range(1, 9))


def test_a_flooded_relay_is_drained_in_bounded_batches_while_other_leases_renew(
    stack: Stack, dispatcher
) -> None:
    flooded, other = submit_long_job(stack, "flooded"), submit_long_job(stack, "other")
    wait_until(lambda: {flooded, other} <= set(dispatcher.active), 120, "both jobs to run")
    lines = 16 * RUN_WRITES_PER_TICK  # within LOG_LINES_KEPT
    relay = dispatcher.active[flooded].relay
    ray.get([relay.put.remote(Log(f"flood {n}")) for n in range(lines)])
    deadline_before = stack.store.get(other).lease_deadline

    wait_until(
        lambda: (
            sum("flood" in line for line in stack.store.logs(flooded, tail=LOG_LINES_KEPT)) == lines
        ),
        120,
        "every flooded line to be stored",
    )
    # The flood took several ticks (one bounded batch each), and the other lease moved on.
    assert stack.store.get(other).lease_deadline > deadline_before
    stored = [line for line in stack.store.logs(flooded, tail=LOG_LINES_KEPT) if "flood" in line]
    assert stored == [f"flood {n}" for n in range(lines)]  # in order, none twice
    for job_id in (flooded, other):
        assert stack.wait_final(job_id, timeout=240).status == JobStatus.SUCCEEDED


def test_run_whose_job_was_taken_over_is_stopped_and_writes_nothing_more(
    stack: Stack, dispatcher
) -> None:
    job_id = submit_long_job(stack, "taken-over")
    wait_until(lambda: job_id in dispatcher.active, 120, "the job to run")
    wait_until(lambda: len(stack.store.metrics(job_id)) >= 1, 120, "a first epoch")
    # Another dispatcher takes the job over, as after an expired lease: the old lease is gone.
    stack.queue.release(dispatcher.active[job_id].lease, "taken over by the test")
    intruder = stack.queue.claim("intruder", lease_seconds=300)
    assert intruder is not None and intruder.job_id == job_id
    rows_at_takeover = len(stack.store.metrics(job_id))

    wait_until(lambda: job_id not in dispatcher.active, 30, "the dispatcher to drop the run")
    wait_until(lambda: not is_running_on_ray(job_id), 30, "the runner to be gone")
    time.sleep(3)  # epochs take about a second: a run still writing would have written
    assert len(stack.store.metrics(job_id)) == rows_at_takeover
    record = stack.store.get(job_id)
    assert (record.status, record.owner) == (JobStatus.RUNNING, "intruder")
    assert record.progress["epoch"] == rows_at_takeover


def test_a_stopping_dispatcher_hands_every_job_back_in_time_though_one_relay_hangs(
    stack: Stack, local_ray: str
) -> None:
    # Long enough that neither ends before the stop, however fast this machine.
    hung, other = submit_long_job(stack, "hung-relay", 200), submit_long_job(stack, "other", 200)
    shutdown_seconds = 3.0
    running = Dispatcher(
        stack.queue,
        stack.store,
        stack.settings,
        lease_seconds=10,
        poll_seconds=0.2,
        shutdown_seconds=shutdown_seconds,
    )
    stop = threading.Event()
    thread = threading.Thread(target=running.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: {hung, other} <= set(running.active), 120, "both jobs to run")
        relay = running.active[hung].relay
        pid = ray.get(relay.__ray_call__.remote(lambda _: os.getpid()))
        os.kill(pid, signal.SIGSTOP)  # a relay that no longer answers, as on a hung node
        try:
            stopped_at = time.monotonic()
            hung_job = running.active[hung]
            wait_until(
                lambda: hung_job.drain is not None and hung_job.drain_sent_at > stopped_at,
                30,
                "a drain of the dispatcher's to wait on the stopped relay",
            )
            started = time.monotonic()
            stop.set()
            thread.join(timeout=120)
            took = time.monotonic() - started
        finally:
            with suppress(ProcessLookupError):  # the stop killed it, as it should
                os.kill(pid, signal.SIGCONT)
    finally:
        stop.set()
        thread.join(timeout=120)
    assert not thread.is_alive()
    # Without the deadline, the hung relay alone held the stop for its 60 s timeout.
    assert took < STOP_SECONDS + shutdown_seconds + 10, took
    for job_id in (hung, other):
        record = stack.store.get(job_id)
        # Handed back as a clean stop: no attempt used and no interruption counted.
        assert (record.status, record.attempts, record.interruptions) == (JobStatus.QUEUED, 0, 0)
        assert f"handed back: dispatcher {running.dispatcher_id} stopped" in events_of(
            stack, job_id
        )
