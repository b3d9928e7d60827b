"""The lease holder keeps a train job's newest recorded checkpoints and deletes the rest, on Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.checkpoint_pruning import KEPT_CHECKPOINTS, Deletions, RecordedCheckpoints
from cluster.ray_runtime import on_the_head
from trainers.checkpoint import STATE_FILE

pytestmark = pytest.mark.ray


def checkpoint(run_dir: Path, claim: int, epoch: int, whole: bool = True) -> str:
    folder = run_dir / f"claim-{claim}" / f"epoch-{epoch:04d}"
    folder.mkdir(parents=True)
    if whole:
        (folder / STATE_FILE).write_bytes(b"state")
    return str(folder)


def left(run_dir: Path) -> list[str]:
    return sorted(str(path.relative_to(run_dir)) for path in run_dir.glob("*/*"))


def test_a_claim_keeps_the_newest_recorded_and_clears_what_earlier_claims_left_unrecorded(
    tmp_path: Path, local_ray: str
) -> None:
    recorded = [checkpoint(tmp_path, 1, epoch) for epoch in (1, 2, 3)]
    checkpoint(tmp_path, 1, 4)  # written as claim 1 was stopped, its message never sent
    checkpoint(tmp_path, 1, 5, whole=False)  # torn by a copy cut off from Redis
    (tmp_path / "claim-1" / "notes").mkdir()  # not a checkpoint: nobody's to delete
    (tmp_path / "claimed" / "epoch-0001").mkdir(parents=True)  # not a claim's folder
    checkpoint(tmp_path, 3, 9)  # a later claim's, which may still be recorded
    deletions = Deletions()

    kept = RecordedCheckpoints(str(tmp_path), 2, recorded, on_the_head(), deletions)
    for epoch in (4, 5):
        kept.add(checkpoint(tmp_path, 2, epoch))
    deletions.settle(60)

    assert KEPT_CHECKPOINTS == 2  # the two newest recorded, both claim 2's
    assert left(tmp_path) == [
        "claim-1/notes",
        "claim-2/epoch-0004",
        "claim-2/epoch-0005",
        "claim-3/epoch-0009",
        "claimed/epoch-0001",
    ]
