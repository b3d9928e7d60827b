"""The job spec: what a researcher writes in YAML, validated into typed pydantic models.

This is a contract shared by the CLI, the dashboard, the dispatcher and the trainers. Every
error a user sees names the field path, the bad value, what is allowed, and the YAML line.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal, Union
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from jobs.model_params import PARAMS_BY_MODEL, Params
from jobs.recipes import with_recipe_defaults
from jobs.search_domains import Choice, Grid, LogUniform, Range, SearchDomain
from jobs.settings import limits
from jobs.spec_errors import FieldError, SpecError, describe_error, format_validation_error
from jobs.yaml_source import YamlSource, parse_yaml

DATASETS = ("digits", "mnist", "binarized_mnist", "fashion_mnist", "cifar10", "image_folder")
# Every dataset is split three ways: train, val (selection: sweeps, schedulers) and test (what
# a paper's table reports; the loop evaluates it after the last epoch).
Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
# Papers report these datasets' official test split; the others hold one out (trainers/data.py).
DATASETS_WITH_TEST_SPLIT = ("mnist", "binarized_mnist", "fashion_mnist", "cifar10")
# Every space key is validated as a whole spec per value it checks (jobs/search_domains.py), so
# this bounds, with MAX_DOMAIN_VALUES, the work one submitted spec can cause.
MAX_SEARCH_KEYS = 16


class Section(BaseModel):
    # Unknown keys are errors, so a spec cannot smuggle in a runtime_env, an entrypoint or a
    # command. No inf or NaN: JSON has neither, so the stored spec would not read back.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _model_variant(model_type: str, params: type[Params]) -> type[Section]:
    return create_model(
        f"{model_type.title().replace('_', '')}Model",
        __base__=Section,
        type=(Literal[model_type], ...),  # type: ignore[valid-type]
        params=(params, Field(default_factory=params)),
    )


MODEL_VARIANTS = {name: _model_variant(name, cls) for name, cls in PARAMS_BY_MODEL.items()}
ModelSpec = Annotated[Union[tuple(MODEL_VARIANTS.values())], Field(discriminator="type")]  # noqa: UP007


class DataSpec(Section):
    dataset: Literal[DATASETS]  # type: ignore[valid-type]
    root: str | None = Field(
        None, description="folder under GENFLEET_DATA_DIR (default: a per-dataset cache folder)"
    )
    download: bool = False
    val_fraction: float = Field(
        0.1, gt=0.0, lt=1.0, description="share of the non-test images held out for selection"
    )
    test_fraction: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="digits, image_folder: share held out as the fixed test split (0.1 if "
        "unset); the other datasets test on their official split",
    )
    image_size: int = Field(32, ge=4, le=256, description="image_folder only: resize to this")
    grayscale: bool = Field(False, description="image_folder only: convert to one channel")

    @field_validator("root")
    @classmethod
    def _root_stays_inside_data_dir(cls, root: str | None) -> str | None:
        if root is None:
            return None
        path = PurePosixPath(root)
        if path.is_absolute() or ".." in path.parts or "\\" in root:
            raise ValueError("must be a relative folder under GENFLEET_DATA_DIR, without '..'")
        return root

    @model_validator(mode="after")
    def _test_fraction_only_without_official_test(self) -> DataSpec:
        if self.test_fraction is not None and self.dataset in DATASETS_WITH_TEST_SPLIT:
            raise ValueError(
                f"test_fraction: {self.dataset} is tested on its official test split; "
                "test_fraction applies to digits and image_folder"
            )
        return self


class TrainSpec(Section):
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(64, ge=1, le=65536)
    lr: float = Field(0.001, gt=0.0, le=10.0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    lr_schedule: Literal["constant", "cosine", "exponential"] = "constant"
    lr_decay: float = Field(
        0.9995, gt=0.0, le=1.0, description="exponential schedule: lr factor applied every step"
    )
    warmup_steps: int = Field(
        0,
        ge=0,
        description="steps of linear lr warm-up before the schedule; a run shorter than its "
        "warm-up only warms up",
    )
    ema_decay: float = Field(
        0.0, ge=0.0, lt=1.0, description="evaluate and sample with an EMA of the weights; 0: off"
    )
    grad_clip: float | None = Field(None, gt=0.0, description="max global grad norm")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    precision: Literal["fp32", "bf16"] = "fp32"
    eval_every: int = Field(1, ge=1, description="epochs")
    test_every: int | None = Field(
        None, ge=1, description="epochs; the test split is always evaluated after the last one"
    )
    sample_every: int = Field(1, ge=1, description="epochs; fixed seed, grids compare")
    num_samples: int = Field(64, ge=1)
    checkpoint_every: int = Field(1, ge=1, description="epochs")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap for quick runs")

    @field_validator("epochs")
    @classmethod
    def _epochs_within_limit(cls, epochs: int) -> int:
        return _within_limit(epochs, limits().max_epochs, "GENFLEET_MAX_EPOCHS")

    @field_validator("num_samples")
    @classmethod
    def _samples_within_limit(cls, num_samples: int) -> int:
        return _within_limit(num_samples, limits().max_samples, "GENFLEET_MAX_SAMPLES")


def _within_limit(value: int, limit: int, variable: str) -> int:
    """`value`, unless it is over the operator's limit set by `variable`."""
    if value > limit:
        raise ValueError(f"must be <= {limit} ({variable})")
    return value


class ScalingSpec(Section):
    num_workers: int = Field(1, ge=1, le=1024)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0.0, le=1024)
    gpus_per_worker: float = Field(1.0, gt=0.0, le=16)
    max_failures: int = Field(2, ge=0, le=100, description="Ray Train restarts from checkpoint")

    @field_validator("num_workers")
    @classmethod
    def _workers_within_limit(cls, num_workers: int) -> int:
        return _within_limit(num_workers, limits().max_workers, "GENFLEET_MAX_WORKERS")

    @property
    def cpus(self) -> float:
        return self.num_workers * self.cpus_per_worker

    @property
    def gpus(self) -> float:
        return self.num_workers * self.gpus_per_worker if self.use_gpu else 0.0


class SchedulingSpec(Section):
    wait_timeout: float | None = Field(
        None,
        gt=0.0,
        description="seconds the job may wait in the queue, counted from when it last entered "
        "it, before it fails with the reason it waited; unset: it waits until it fits",
    )


# Experiment trackers a spec can turn on under `logging` (issue 16). Each one's name is also the
# package it needs and the genfleet extra that installs it: `pip install 'genfleet[mlflow]'`.
TRACKERS = ("tensorboard", "mlflow")
# A tracking server only: a file store would let whoever submits a spec choose where the
# workers write (SECURITY.md, "No file name is taken from a user").
TRACKING_URI_SCHEMES = ("http", "https")


class MlflowSpec(Section):
    tracking_uri: str = Field(
        min_length=1,
        max_length=2048,
        description="an MLflow server, http(s)://host:port, as seen from where the run trains",
    )
    experiment: str = Field("genfleet", min_length=1, max_length=200, pattern=r"^\w[\w.\-/: ]*$")

    @field_validator("tracking_uri")
    @classmethod
    def _a_tracking_server(cls, uri: str) -> str:
        if not uri.isprintable():
            raise ValueError("must not hold control characters")
        parts = urlsplit(uri)
        if parts.scheme not in TRACKING_URI_SCHEMES:
            raise ValueError(f"must be an MLflow server's http(s)://host:port URL, got {uri!r}")
        if not parts.hostname:
            raise ValueError(f"needs a host, got {uri!r}")
        if parts.username or parts.password:
            # Specs are stored and shown in the dashboard; MLflow reads secrets from the env.
            raise ValueError(
                "must not hold credentials; set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) where the run trains"
            )
        return uri


class LoggingSpec(Section):
    tensorboard: bool = Field(
        False, description="event files under the run's storage, for `tensorboard --logdir`"
    )
    mlflow: MlflowSpec | None = None

    @property
    def trackers(self) -> list[str]:
        """The TRACKERS this spec turns on."""
        asked = {"tensorboard": self.tensorboard, "mlflow": self.mlflow is not None}
        return [name for name in TRACKERS if asked[name]]


class SweepSpec(Section):
    metric: str = Field("val_bits_per_dim", pattern=r"^[a-z][a-z0-9_]{0,63}$")
    mode: Literal["min", "max"] = "min"
    num_samples: int = Field(8, ge=1, le=10000)
    max_concurrent: int = Field(2, ge=1, le=1024)
    search: Literal["random", "grid", "optuna"] = "random"
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1, description="epochs before ASHA may stop a trial")
    space: dict[str, SearchDomain] = Field(min_length=1, max_length=MAX_SEARCH_KEYS)

    @property
    def trials(self) -> int:
        """How many trials Tune runs: each grid combination (and under `search: grid`, each
        choice) `num_samples` times."""
        combinations = 1
        for domain in self.space.values():
            if isinstance(domain, Grid):
                combinations *= len(domain.grid)
            elif isinstance(domain, Choice) and self.search == "grid":
                combinations *= len(domain.choice)
        return self.num_samples * combinations

    @property
    def concurrent_trials(self) -> int:
        return min(self.max_concurrent, self.trials)

    @property
    def test_metric(self) -> str | None:
        return test_metric_of(self.metric)

    @model_validator(mode="after")
    def _domains_fit_search(self) -> SweepSpec:
        for key, domain in self.space.items():
            if isinstance(domain, Range) and not domain.bounds[0] < domain.bounds[1]:
                raise ValueError(
                    f"space.{key}: lower bound must be < upper, got {list(domain.bounds)}"
                )
            if isinstance(domain, LogUniform) and domain.loguniform[0] <= 0:
                raise ValueError(f"space.{key}.loguniform: bounds must be > 0")
            if self.search == "optuna" and isinstance(domain, Grid):
                raise ValueError(f"space.{key}: grid is not supported by search: optuna")
            if self.search == "grid" and not isinstance(domain, Grid | Choice):
                raise ValueError(f"space.{key}: search: grid needs grid or choice domains")
        return self


# Measured on val alone: FCD compares samples with val images (trainers/loop.py).
VAL_ONLY_METRICS = ("val_fcd",)


def test_metric_of(metric: str) -> str | None:
    """What a trial chosen on a val metric reports beside it: its test split counterpart
    (`val_bits_per_dim` -> `test_bits_per_dim`), if it has one."""
    if not metric.startswith("val_") or metric in VAL_ONLY_METRICS:
        return None
    return "test_" + metric.removeprefix("val_")


class JobSpec(Section):
    name: str = Field("job", min_length=1, max_length=120, pattern=r"^[A-Za-z0-9][\w.\- ]*$")
    kind: Literal["train", "sweep"] = "train"
    priority: int = Field(5, ge=0, le=9, description="higher runs first; FIFO within one")
    max_attempts: int = Field(3, ge=1, le=100, description="claims before dead-lettering")
    model: ModelSpec
    data: DataSpec
    train: TrainSpec = Field(default_factory=TrainSpec)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec)
    logging: LoggingSpec = Field(default_factory=LoggingSpec)
    sweep: SweepSpec | None = None

    @property
    def concurrent_runs(self) -> int:
        """Train runs that hold resources at once: a sweep's concurrent trials, else one."""
        return self.sweep.concurrent_trials if self.sweep is not None else 1

    @property
    def needs_cpus(self) -> float:
        return self.concurrent_runs * self.scaling.cpus

    @property
    def needs_gpus(self) -> float:
        return self.concurrent_runs * self.scaling.gpus

    @model_validator(mode="before")
    @classmethod
    def _recipe_fills_unset_train_fields(cls, data: Any) -> Any:
        return with_recipe_defaults(data)

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        if self.kind == "sweep" and self.sweep is None:
            raise ValueError("sweep: required when kind is sweep")
        if self.kind == "train" and self.sweep is not None:
            raise ValueError("sweep: only allowed when kind is sweep")
        if self.kind == "sweep" and self.train.eval_every != 1:
            raise ValueError(
                "train.eval_every: must be 1 in a sweep (the scheduler reads every epoch)"
            )
        if self.train.precision == "bf16" and not self.scaling.use_gpu:
            raise ValueError("train.precision: bf16 needs scaling.use_gpu: true")
        return self

    @property
    def model_type(self) -> str:
        return self.model.type

    def to_yaml_dict(self) -> dict[str, Any]:
        """The spec as YAML shows it: without unset values, or a section left empty by them."""
        data = self.model_dump(mode="json", exclude_none=True)
        return {key: value for key, value in data.items() if value != {}}


def validate_spec_dict(data: Any, source: YamlSource | None = None) -> JobSpec:
    """Validate a parsed spec; raise SpecError listing every problem with field and line."""
    if not isinstance(data, dict):
        raise SpecError([FieldError("", f"a spec must be a mapping, got {type(data).__name__}")])
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, source)) from None
    if spec.sweep is not None:
        errors = _check_search_space(data, spec.sweep, tunable_paths(spec.model_type))
        if errors:
            raise SpecError([error.located(source) for error in errors])
    missing = missing_tracker_packages(spec.logging)
    if missing:
        raise SpecError([error.located(source) for error in missing])
    return spec


def missing_tracker_packages(section: LoggingSpec) -> list[FieldError]:
    """A tracker the spec turns on whose package is not installed here, found without importing it.

    Checked where a spec is submitted or run, and again by the job's runner on the cluster, not
    in JobSpec's validators: stored specs are revalidated wherever they are read (the dashboard,
    `genfleet jobs`), also without the package.
    """
    return [
        FieldError(f"logging.{name}", f"needs the {name} package; pip install 'genfleet[{name}]'")
        for name in section.trackers
        if importlib.util.find_spec(name) is None
    ]


def load_spec_text(text: str | bytes, source_name: str = "<spec>") -> JobSpec:
    """Parse YAML text (safe loader, no aliases, size-limited) and validate it."""
    data, source = parse_yaml(text, source_name)
    try:
        return validate_spec_dict(data, source)
    except SpecError as exc:
        raise exc.with_source(source_name) from None


# What a sweep may vary besides the model's own params: every field of these sections.
TUNABLE_SECTIONS: dict[str, type[Section]] = {
    "train": TrainSpec,
    "data": DataSpec,
    "scaling": ScalingSpec,
}


def tunable_paths(model_type: str) -> list[str]:
    """Every path a sweep's space may name for this model, as the Submit form offers them: the
    model's params (`model.params.channels`), then each TUNABLE_SECTIONS field (`train.lr`)."""
    params = [f"model.params.{name}" for name in PARAMS_BY_MODEL[model_type].model_fields]
    return params + [
        f"{section}.{name}"
        for section, fields in TUNABLE_SECTIONS.items()
        for name in fields.model_fields
    ]


def _check_search_space(
    data: dict[str, Any], sweep: SweepSpec, tunable: list[str]
) -> list[FieldError]:
    """Each space key must be one of the `tunable` paths, and every value it can take valid."""
    errors: list[FieldError] = []
    base = {key: value for key, value in data.items() if key not in ("sweep", "kind")}
    for key, domain in sweep.space.items():
        path = key.split(".")
        field = f"sweep.space.{key}"
        if key not in tunable:
            errors.append(FieldError(field, "does not name a tunable field of this spec"))
            continue
        for index, value in enumerate(domain.values_to_check()):
            label = f"{domain.name()}[{index}]"
            trial = copy.deepcopy(base)
            _set_path(trial, path, value)
            try:
                JobSpec.model_validate(trial)
            except ValidationError as exc:
                reason = describe_error(exc.errors()[0])
                errors.append(FieldError(f"{field}.{label}", reason))
    return errors


def _set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def apply_overrides(spec: JobSpec, overrides: dict[str, Any]) -> JobSpec:
    """A copy of `spec` with dotted-path values set (a sweep trial's config), revalidated."""
    data = spec.model_dump(mode="json")
    data.pop("sweep", None)
    data["kind"] = "train"
    for key, value in overrides.items():
        _set_path(data, key.split("."), _plain(value))
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:  # a sampled value the spec refuses: every retry samples it
        raise SpecError(format_validation_error(exc, None)) from None


def _plain(value: Any) -> Any:
    """Tune hands numpy scalars; pydantic wants Python numbers."""
    return value.item() if hasattr(value, "item") else value
