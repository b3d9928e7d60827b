"""Evaluate a checkpoint in this process: find it, copy it out of object storage, read its spec.

Checkpoints in object storage (`s3://`, `gs://`) are copied to a temporary folder first.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cluster.cli_errors import UserError
from jobs.spec import JobSpec, Split


@dataclass(frozen=True)
class Target:
    spec: JobSpec | None  # None: read the one saved in the checkpoint
    checkpoint: str  # a folder, or a storage URI


def evaluate_target(
    target: Target,
    data_dir: Path,
    split: Split,
    iw_samples: int | None,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate here; the user's mistakes (data, checkpoint, option) become one-line errors."""
    import torch

    from trainers.checkpoint import CheckpointError
    from trainers.data import DatasetError
    from trainers.evaluation import EvaluationError, evaluate_checkpoint

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        with local_copy(target.checkpoint) as (folder, shown):
            result = evaluate_checkpoint(
                target.spec, folder, data_dir, split, iw_samples, device, on_batch
            )
    except (CheckpointError, DatasetError, EvaluationError) as exc:
        raise UserError(str(exc)) from None
    return {**result, "checkpoint": shown}


@contextmanager
def local_copy(location: str) -> Iterator[tuple[Path, str]]:
    """(a local folder holding the newest checkpoint at `location`, where it really is).

    A URI's checkpoint, and only that one, is copied to a temporary folder first.
    """
    import pyarrow.fs

    from trainers.checkpoint import STATE_FILE, CheckpointError

    is_uri = "://" in location
    try:
        filesystem, root = pyarrow.fs.FileSystem.from_uri(
            location if is_uri else str(Path(location).resolve())
        )
        if filesystem.get_file_info(root).type != pyarrow.fs.FileType.Directory:
            raise CheckpointError(f"checkpoint: {location} is not a folder")
        folder = newest_checkpoint(filesystem, root)
    except (OSError, ValueError) as exc:  # pyarrow raises both for a bad or unreachable URI
        raise CheckpointError(f"checkpoint: cannot read {location} ({exc})") from None
    if folder is None:
        raise CheckpointError(
            f"checkpoint: no {STATE_FILE} in {location} or the two levels of folders below it"
        )
    if not is_uri:
        yield Path(folder), folder
        return
    shown = f"{location.split('://', 1)[0]}://{folder}"
    with tempfile.TemporaryDirectory(prefix="genfleet-evaluate-") as scratch:
        pyarrow.fs.copy_files(folder, scratch, source_filesystem=filesystem)
        yield Path(scratch), shown


def newest_checkpoint(filesystem: Any, root: str) -> str | None:
    """`root` when it is a checkpoint folder, else the newest one up to two levels below it.

    Two levels covers `run-local`'s `OUT/checkpoints/epoch-NNNN`, a cluster job's
    `STORAGE/<job>/claim-N/epoch-NNNN` and a sweep trial's `STORAGE/<job>-<trial>/epoch-NNNN`.
    Newest is the greatest folder name, the latest epoch: file times do not survive a copy.
    """
    import pyarrow.fs

    def children(path: str) -> list[Any]:
        return filesystem.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))

    if _holds_state(filesystem, filesystem.get_file_info(root)):
        return root
    found = []
    for child in children(root):
        if child.type == pyarrow.fs.FileType.Directory:
            below = [child, *children(child.path)]
            found += [f.path for f in below if _holds_state(filesystem, f)]
    return max(found, key=lambda path: PurePosixPath(path).name, default=None)


def _holds_state(filesystem: Any, info: Any) -> bool:
    import pyarrow.fs

    from trainers.checkpoint import STATE_FILE

    if info.type != pyarrow.fs.FileType.Directory:
        return False
    return filesystem.get_file_info(f"{info.path}/{STATE_FILE}").type == pyarrow.fs.FileType.File
