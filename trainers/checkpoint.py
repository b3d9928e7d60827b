"""Checkpoint folders and the random-number state a resumed run needs to continue the same curve.

A checkpoint is a folder holding one torch file, so Ray Train can upload it as a directory. It
is loaded with `weights_only=True`: checkpoints may come from shared storage, and that loader
runs no pickled code.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jobs.failures import NotRetryable

STATE_FILE = "training_state.pt"
FOLDER_PREFIX = "epoch-"


class CheckpointError(NotRetryable):
    """A checkpoint cannot be used; the message names the file."""


def checkpoint_folder(root: Path, epoch: int) -> Path:
    return root / f"{FOLDER_PREFIX}{epoch:04d}"


def save_checkpoint(folder: Path, state: dict[str, Any]) -> Path:
    """Write `state` into `folder`; a crash mid-write leaves no half-written state file."""
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"{STATE_FILE}.partial"
    torch.save(state, partial)
    partial.replace(folder / STATE_FILE)
    return folder


def load_checkpoint(folder: Path) -> dict[str, Any]:
    path = folder / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint: no {STATE_FILE} in {folder}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise CheckpointError(f"checkpoint: cannot read {path} ({exc})") from exc


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` epoch folders under `root` (only ones this module names)."""
    epochs = {
        int(folder.name.removeprefix(FOLDER_PREFIX)): folder
        for folder in root.glob(f"{FOLDER_PREFIX}*")
        if folder.name.removeprefix(FOLDER_PREFIX).isdigit()
    }
    folders = [epochs[epoch] for epoch in sorted(epochs)]
    for folder in folders[: max(0, len(folders) - keep)]:
        shutil.rmtree(folder)


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every generator training draws from: torch (CPU and this rank's GPU), numpy, python."""
    numpy_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        # numpy's state holds an ndarray, which weights_only loading refuses: store a tensor.
        "numpy_keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
        "numpy_position": int(numpy_state[2]),
        "numpy_gauss": (int(numpy_state[3]), float(numpy_state[4])),
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    has_gauss, cached_gaussian = state["numpy_gauss"]
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_position"], has_gauss, cached_gaussian))
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
