"""`genfleet evaluate`: the exact likelihood of a saved checkpoint over one split.

The numbers come from the loop's own `evaluate_split` over the same data, weights (the EMA
when the run kept one) and final-evaluation settings, so evaluating a run's last checkpoint on
test gives the run's own `test_bits_per_dim`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from jobs.model_params import Params, VAEParams
from jobs.spec import JobSpec, Split
from trainers import checkpoint
from trainers.batches import EvaluationBatches
from trainers.data import load_dataset
from trainers.loop import evaluate_split, evaluation_mode, likelihood_kind
from trainers.models import build_model


class EvaluationError(ValueError):
    """The request cannot be evaluated as asked; the message names the option."""


def evaluate_checkpoint(
    spec: JobSpec | None,
    folder: Path,
    data_dir: Path,
    split: Split,
    iw_samples: int | None = None,
    device: torch.device | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """`<split>_bits_per_dim`, `<split>_nll_nats` and the model's other terms for `folder`,
    trained from `spec` (None: the spec saved in the checkpoint)."""
    state = checkpoint.load_checkpoint(folder)
    spec = spec or saved_spec(state, folder)
    if state.get("model_type") != spec.model.type:
        raise checkpoint.CheckpointError(
            f"checkpoint: {folder} holds a {state.get('model_type')!r} model, "
            f"the spec trains {spec.model.type!r}"
        )
    data = load_dataset(spec.data, data_dir, spec.train.seed)
    params = with_importance_samples(spec, iw_samples)
    model = build_model(spec.model.type, params, data.shape, data.num_classes)
    load_weights(model, state, folder)
    device = device or torch.device("cpu")
    images = data.split(split)
    batches = EvaluationBatches(images, spec.train.batch_size, device)
    with evaluation_mode(model.to(device)) as evaluated:
        metrics = evaluate_split(evaluated, batches, f"{split}_", True, device, on_batch)
    return {
        "checkpoint": str(folder),
        "epoch": state["epoch"],
        "split": split,
        "images": len(images),
        "likelihood": likelihood_kind(model),
        **metrics,
    }


def saved_spec(state: dict[str, Any], folder: Path) -> JobSpec:
    saved = state.get("spec")
    if saved is None:
        raise EvaluationError(f"checkpoint: {folder} holds no spec; pass the run's with --spec")
    return JobSpec.model_validate(saved)


def with_importance_samples(spec: JobSpec, iw_samples: int | None) -> Params:
    """The model's params, with the IWAE bound's k set to `iw_samples` when given."""
    params = spec.model.params
    if iw_samples is None:
        return params
    if not isinstance(params, VAEParams):
        raise EvaluationError(
            f"--iw-samples: only the vae's importance-weighted bound takes samples, "
            f"not {spec.model.type}"
        )
    return params.model_copy(update={"iw_samples_final": iw_samples})


def load_weights(model: torch.nn.Module, state: dict[str, Any], folder: Path) -> None:
    """The weights the run evaluated with: the EMA's when it kept one."""
    ema = state.get("ema")
    weights = ema["model"] if ema else state["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:  # missing, unexpected or differently shaped tensors
        first_line = str(exc).splitlines()[1 if "\n" in str(exc) else 0].strip()
        raise checkpoint.CheckpointError(
            f"checkpoint: {folder} does not match the spec's model.params ({first_line})"
        ) from None
