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
    for epoch in (4, 5, 6):
        kept.add(checkpoint(tmp_path, 2, epoch))
    deletions.settle(60)

    assert KEPT_CHECKPOINTS == 3  # the three newest recorded, all claim 2's
    assert left(tmp_path) == [
        "claim-1/notes",
        "claim-2/epoch-0004",
        "claim-2/epoch-0005",
        "claim-2/epoch-0006",
        "claim-3/epoch-0009",
        "claimed/epoch-0001",
    ]


def test_recorded_checkpoints_spelled_as_uris_through_a_symlink_are_kept(
    tmp_path: Path, local_ray: str
) -> None:
    """Two dispatchers may spell one storage two ways: one recorded `file://` URIs through a
    symlink, the next gives the real folder. A recorded folder is kept either way."""
    real = tmp_path / "real"
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    for epoch in (1, 2, 3):
        checkpoint(real, 1, epoch)
    recorded = [(link / "claim-1" / f"epoch-{epoch:04d}").as_uri() for epoch in (1, 2)]
    deletions = Deletions()

    RecordedCheckpoints(str(real), 2, recorded, on_the_head(), deletions)
    deletions.settle(60)

    assert left(real) == ["claim-1/epoch-0001", "claim-1/epoch-0002"]  # epoch 3: unrecorded
