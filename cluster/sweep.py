"""Sweeps: a Ray Tune experiment whose trials are Ray Train runs (Ray 2.60, Train V2), or,
for one CPU worker per trial, direct runs in their trial actors.

Each trial is a function trainable. A multi-worker or GPU trial launches its own TorchTrainer;
`TuneReportCallback` forwards the Train workers' reports to Tune, so ASHA sees every epoch's
metric. A one-worker CPU trial trains in its trial actor itself (cluster/train_worker.py's
`train_directly`), reporting each epoch with `tune.report`; Tune hands the actor the next
trial (`reuse_actors`), so no trial pays a process's start-up. A sweep restarted under the
same job id (its dispatcher died and another one claimed it) resumes with `Tuner.restore`:
finished trials stay finished, and each unfinished trial resumes from its last checkpoint in
`<job id>-<trial id>`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

from cluster.checkpoint_pruning import KEPT_CHECKPOINTS
from cluster.ray_runtime import placement_group_id
from cluster.train_run import claim_trainer, direct_run_config, newest_in_claim
from cluster.train_worker import train_directly
from jobs.failures import NotRetryable
from jobs.messages import Log, PlacementGroup, TrialUpdate, Unrecoverable
from jobs.records import TrialStatus
from jobs.search_domains import Choice, Grid, LogUniform, RandInt, SearchDomain, Uniform
from jobs.spec import JobSpec, apply_overrides

# What a trial's own process reserves: it only drives its TorchTrainer, whose workers hold the
# real resources. Memory, not a sliver of CPU: with 0.01 CPU per driver, two concurrent trials
# of one CPU each needed 2.02 CPUs of a 2-CPU cluster, and the second trial's worker group
# waited forever for a CPU the drivers had split (the `up --demo` sweep stall, issue 11 item 7).
TRIAL_DRIVER_MEMORY_BYTES = 64 * 2**20
ASHA_REDUCTION_FACTOR = 2  # rungs at grace, 2*grace, 4*grace...: useful with few epochs

# Tune pickles its callbacks into the experiment, and `Tuner.restore` brings them back holding
# the relay of the dispatcher that died. So `TrialRelay` looks its relay up when it sends: each
# JobRunner process drives one sweep, and `run_sweep` records the relay it was given here.
_relay_by_job: dict[str, Any] = {}


def tune_domain(domain: SearchDomain, search: str) -> Any:
    # `search: grid` promises every combination, so its choices are enumerated, not sampled.
    if isinstance(domain, Choice) and search == "grid":
        return tune.grid_search(domain.choice)
    if isinstance(domain, Choice):
        return tune.choice(domain.choice)
    if isinstance(domain, Grid):
        return tune.grid_search(domain.grid)
    if isinstance(domain, Uniform):
        return tune.uniform(*domain.uniform)
    if isinstance(domain, LogUniform):
        return tune.loguniform(*domain.loguniform)
    if isinstance(domain, RandInt):
        return tune.randint(*domain.randint)
    raise TypeError(f"unknown search domain {domain!r}")


def run_sweep(
    job_id: str,
    spec: JobSpec,
    loop_config: dict[str, Any],
    storage: str,
    recorded: dict[str | None, list[str]],
    direct: bool,
) -> dict[str, Any]:
    """Run the sweep's Tune experiment, or resume it; `recorded`: each trial's recorded
    checkpoints, newest first, from which a trial Tune runs again starts. `direct`: each trial
    trains in its trial actor (cluster/warm_runner.py's `runs_directly`), not in Ray Train."""
    sweep = spec.sweep
    assert sweep is not None
    relay = loop_config["relay"]
    _relay_by_job[job_id] = relay

    def trial(config: dict[str, Any]) -> None:
        trial_id = tune.get_context().get_trial_id()
        relay.put.remote(PlacementGroup(placement_group_id(), trial_id))
        try:
            trial_spec = apply_overrides(spec, config)
        except NotRetryable as exc:  # a sampled value the spec refuses: every retry samples it
            ray.get(relay.put.remote(Unrecoverable(f"{type(exc).__name__}: {exc}", trial_id)))
            raise
        trial_config = {**loop_config, "trial": trial_id}
        run_dir = f"{storage.rstrip('/')}/{job_id}-{trial_id}"
        if direct:  # in this trial actor, which Tune hands the next trial (`reuse_actors`)
            config = direct_run_config(
                trial_spec, trial_config, run_dir, recorded.get(trial_id, [])
            )
            # Tune runs a failed trial again (its FailureConfig): from what it wrote before.
            written = newest_in_claim(config["checkpoint_root"])
            config["resume_from"] = written or config["resume_from"]
            train_directly(config, report=tune.report, keep_checkpoints=KEPT_CHECKPOINTS)
            return
        trainer = claim_trainer(
            trial_spec,
            trial_config,
            run_dir,
            recorded.get(trial_id, []),
            KEPT_CHECKPOINTS,
            [TuneReportCallback()],
        )
        trainer.fit()

    # A direct trial trains in its trial actor, which holds the worker's resources. Else the
    # actor only drives a TorchTrainer; Tune refuses an empty request, so it asks for a little
    # memory (see above).
    resources = {"cpu": 0, "memory": TRIAL_DRIVER_MEMORY_BYTES}
    if direct:
        resources["cpu"] = spec.scaling.cpus_per_worker
    trainable = tune.with_resources(trial, resources)
    experiment = str(Path(storage) / job_id) if "://" not in storage else f"{storage}/{job_id}"
    if tune.Tuner.can_restore(experiment):
        relay.put.remote(Log(f"resuming the sweep in {experiment}"))
        tuner = tune.Tuner.restore(
            experiment, trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        tuner = _new_tuner(job_id, spec, trainable, storage, direct)
    summary = _summary(tuner.fit(), spec)
    # Waited for: `TrialRelay`'s messages from this process then are in the relay too (one
    # caller's actor calls run in order), before the dispatcher drains it for the last time.
    ray.get(relay.put.remote(Log(_finished_line(summary))))
    return summary


def _summary(results: Any, spec: JobSpec) -> dict[str, Any]:
    sweep = spec.sweep
    assert sweep is not None
    best = _best_result(results, sweep.metric, sweep.mode)
    return {
        "best_trial": (best.metrics or {}).get("trial_id"),
        "best_config": _plain(best.config),
        "best_metric": (best.metrics or {}).get(sweep.metric),
        "metric": sweep.metric,
        # Chosen on val, reported on test: the number that stands beside a paper's table.
        "best_test_metric": (best.metrics or {}).get(sweep.test_metric or ""),
        "test_metric": sweep.test_metric,
        "trials": len(results),
        "errors": len(results.errors),
    }


def _finished_line(summary: dict[str, Any]) -> str:
    line = (
        f"sweep finished: {summary['trials']} trials, {summary['errors']} failed; best "
        f"{summary['best_trial']} with {summary['metric']} {summary['best_metric']}"
    )
    if summary["test_metric"]:
        line += f", {summary['test_metric']} {summary['best_test_metric']}"
    return line


def _best_result(results: Any, metric: str, mode: str) -> Any:
    """The best trial's result, or an error that says what became of each trial.

    Tune's own error ("No best trial found ...") names no trial and no cause, and with a
    single trial Tune returns it whether or not it reported the metric.
    """
    try:
        best = results.get_best_result(metric=metric, mode=mode)
    except RuntimeError:
        best = None
    if best is not None and (best.metrics or {}).get(metric) is not None:
        return best
    fates = []
    for result in results:
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        if result.error is not None:
            cause = str(result.error).strip().splitlines()
            fates.append(
                f"{trial_id} failed: {cause[-1] if cause else type(result.error).__name__}"
            )
        else:
            fates.append(f"{trial_id} ended without reporting it")
    raise RuntimeError(
        f"no trial of the sweep reported {metric}: " + "; ".join(fates or ["no trials ran"])
    )


def _new_tuner(
    job_id: str, spec: JobSpec, trainable: Any, storage: str, direct: bool
) -> tune.Tuner:
    sweep = spec.sweep
    assert sweep is not None
    return tune.Tuner(
        trainable,
        param_space={key: tune_domain(domain, sweep.search) for key, domain in sweep.space.items()},
        tune_config=tune.TuneConfig(
            metric=sweep.metric,
            mode=sweep.mode,
            num_samples=sweep.num_samples,
            # Not `max_concurrent_trials`: Tune applies it only to a `Searcher`, and ignored it
            # for the `BasicVariantGenerator` of random and grid search, which ran every trial
            # at once. Each search algorithm carries the limit itself.
            search_alg=_search_algorithm(spec),
            scheduler=_scheduler(spec),
            # A direct trial's actor has imported torch and the trainers: the next trial needs
            # no new process (issue 14: the demo sweep's trials each paid a start-up).
            reuse_actors=direct,
        ),
        run_config=tune.RunConfig(
            name=job_id,
            storage_path=storage,
            callbacks=[TrialRelay(job_id, spec)],
            # A direct trial has no Ray Train to restart it: Tune does, as often.
            failure_config=tune.FailureConfig(
                max_failures=spec.scaling.max_failures if direct else 0
            ),
        ),
    )


def _search_algorithm(spec: JobSpec) -> Any:
    sweep = spec.sweep
    assert sweep is not None
    if sweep.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(
            OptunaSearch(seed=spec.train.seed), max_concurrent=sweep.max_concurrent
        )
    return BasicVariantGenerator(random_state=spec.train.seed, max_concurrent=sweep.max_concurrent)


def _scheduler(spec: JobSpec) -> Any:
    sweep = spec.sweep
    assert sweep is not None
    if sweep.scheduler == "fifo":
        return FIFOScheduler()
    # Epochs, not Tune's training_iteration: a trial resumed after `Tuner.restore` counts its
    # iterations from 1 again, while its epochs continue from the checkpoint.
    return ASHAScheduler(
        time_attr="epoch",
        max_t=spec.train.epochs,
        grace_period=min(sweep.grace_period, spec.train.epochs),
        reduction_factor=ASHA_REDUCTION_FACTOR,
    )


class TrialRelay(tune.Callback):
    """Sends each trial's config, status and, for early stops, the reason to the relay.

    Holds plain values only: Tune pickles its callbacks into the experiment, and a restore,
    perhaps by a newer genfleet, must read them back (a JobSpec would tie the pickle to the
    spec's classes).
    """

    def __init__(self, job_id: str, spec: JobSpec) -> None:
        sweep = spec.sweep
        assert sweep is not None
        self.job_id = job_id
        self.metric, self.test_metric = sweep.metric, sweep.test_metric or ""
        self.epochs = spec.train.epochs
        self.stops_early = sweep.scheduler == "asha"
        self.finished_resent = False

    def _send(
        self,
        trial: Any,
        status: TrialStatus,
        reason: str | None = None,
        result: dict | None = None,
    ) -> None:
        last = result or trial.last_result or {}
        info = {
            "config": _plain(trial.config),
            "status": status.value,
            # Tune hands metric values over as numpy scalars, which JSON cannot hold.
            "metric": _plain_value(last.get(self.metric)),
            "test_metric": _plain_value(last.get(self.test_metric)),
            "iterations": last.get("epoch", 0),
            "reason": reason,
        }
        _relay_by_job[self.job_id].put.remote(TrialUpdate(trial.trial_id, info))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._send(trial, TrialStatus.RUNNING)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        self._send(trial, TrialStatus.RUNNING)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        done = (trial.last_result or {}).get("epoch", 0)
        if done < self.epochs and self.stops_early:
            reason = (
                f"stopped early by ASHA after epoch {done}: below the top "
                f"1/{ASHA_REDUCTION_FACTOR} of trials at that rung"
            )
            self._send(trial, TrialStatus.STOPPED, reason)
        else:
            self._send(trial, TrialStatus.COMPLETED)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._send(
            trial, TrialStatus.ERROR, str(getattr(trial, "error_file", "") or "trial failed")
        )

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        """Once, as a restored experiment's first step begins: each finished trial's end again.
        A trial that ended just before its dispatcher died had its update lost with that
        dispatcher's relay, and `Tuner.restore` does not run a finished trial again."""
        if not self.finished_resent:
            self.finished_resent = True
            self._send_finished(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._send_finished(trials)  # the restored run's dispatcher may have died in turn

    def _send_finished(self, trials: list) -> None:
        for trial in trials:
            if trial.status == Trial.TERMINATED:
                self.on_trial_complete(0, trials, trial)
            elif trial.status == Trial.ERROR:
                self.on_trial_error(0, trials, trial)


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    return {key: _plain_value(value) for key, value in config.items()}


def _plain_value(value: Any) -> Any:
    """A numpy scalar as the Python number it holds; anything else as it is."""
    return value.item() if hasattr(value, "item") else value
