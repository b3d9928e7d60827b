"""Keeps a train job's newest recorded checkpoints and deletes the older ones.

Ray Train keeps every checkpoint of a claim: its own pruning (keep the newest N) would, in a copy
of the run that lost its lease and ran on, delete the checkpoints the store had recorded for
ones nobody recorded, and the next claim, which resumes only from a recorded checkpoint, would
start over. The dispatcher that holds the lease prunes instead: once `KEPT_CHECKPOINTS` newer
ones are recorded in the store, an older one is deleted, by a task on the head node, which
reaches the storage as the runner does. What a cut-off copy wrote, never recorded, is deleted
when the next claim starts.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import PurePosixPath
from typing import Any

import pyarrow.fs
import ray

from cluster.train_run import CLAIM_PREFIX
from jobs.run_storage import located
from trainers.checkpoint import FOLDER_PREFIX, STATE_FILE

log = logging.getLogger(__name__)

# Three, not two: Ray Train resumes a worker it restarted within the claim from the newest
# checkpoint it registered, which can be two reports behind the newest recorded one. A rank's
# report waits until its previous one is collected, and every rank passes a barrier before
# each report, so when rank 0 sends checkpoint K (after its report returned), every rank's
# report K-2 is collected. Keeping two, a worker killed after epochs sped by met a deleted K-2.
KEPT_CHECKPOINTS = 3


class Deletions:
    """The checkpoint deletions a dispatcher asked for that Ray has not finished.

    A task dies with the driver that owns it, and the dispatcher is that driver: one stopped
    right after its last job ended would take that job's last deletion with it. So a dispatcher
    waits for these before it stops.
    """

    def __init__(self) -> None:
        self._pending: list[ray.ObjectRef] = []

    def delete(self, uri: str, head: Any) -> None:
        """Delete the checkpoint folder `uri` by a task on `head` (`on_the_head()`)."""
        self._pending.append(_delete.options(scheduling_strategy=head).remote(uri))

    def delete_unrecorded(self, run_dir: str, claim: int, recorded: list[str], head: Any) -> None:
        """Delete the checkpoint folders that claims before `claim` wrote and the store never
        recorded, by a task on `head`."""
        task = _delete_unrecorded.options(scheduling_strategy=head)
        self._pending.append(task.remote(run_dir, claim, recorded))

    def forget_done(self) -> None:
        """Drop the finished ones, so that a long-lived dispatcher keeps no list of them."""
        if self._pending:
            _, self._pending = ray.wait(self._pending, num_returns=len(self._pending), timeout=0)

    def settle(self, timeout: float) -> None:
        """Wait up to `timeout` s for every deletion asked for."""
        if self._pending:
            ray.wait(self._pending, num_returns=len(self._pending), timeout=timeout)


class RecordedCheckpoints:
    """A train job's recorded checkpoints, oldest first, the newest `KEPT_CHECKPOINTS` kept."""

    def __init__(
        self, run_dir: str, claim: int, uris: list[str], head: Any, deletions: Deletions
    ) -> None:
        """Claim number `claim` of the job training in `run_dir` starts, `uris` recorded.

        What earlier claims wrote and the store never recorded goes first: a copy of the run
        that lost its lease, or one stopped between writing a checkpoint and sending its
        message, left it, and fencing keeps it unrecorded for good. `head`: where the deleting
        tasks run (`on_the_head()`, looked up once).
        """
        self._kept: deque[str] = deque(dict.fromkeys(uris))
        self._head = head
        self._deletions = deletions
        try:
            deletions.delete_unrecorded(run_dir, claim, uris, head)
        except Exception as exc:  # best effort, as `_prune`
            log.warning("could not clear %s of unrecorded checkpoints (%s)", run_dir, exc)
        self._prune()

    def add(self, uri: str) -> None:
        """`uri` is recorded in the store now (a worker restarted within a claim records an
        epoch's folder again)."""
        if uri not in self._kept:
            self._kept.append(uri)
            self._prune()

    def _prune(self) -> None:
        while len(self._kept) > KEPT_CHECKPOINTS:
            uri = self._kept.popleft()
            try:
                self._deletions.delete(uri, self._head)
            except Exception as exc:  # best effort: a folder left over costs only disk
                log.warning("could not delete checkpoint %s (%s)", uri, exc)


@ray.remote(num_cpus=0, max_retries=3)
def _delete(uri: str) -> None:
    """Delete a checkpoint folder: one named as the training loop names them, holding its
    state file, and nothing else (a record from before checkpoints had folders of their own
    names the run's whole folder)."""
    filesystem, path = located(uri)
    if not PurePosixPath(path).name.startswith(FOLDER_PREFIX):
        return
    if filesystem.get_file_info(f"{path}/{STATE_FILE}").type == pyarrow.fs.FileType.File:
        filesystem.delete_dir(path)


@ray.remote(num_cpus=0, max_retries=3)
def _delete_unrecorded(run_dir: str, claim: int, recorded: list[str]) -> None:
    filesystem, root = located(run_dir)
    kept = {located(uri)[1] for uri in recorded}
    for claim_folder in _folders(filesystem, root):
        name = PurePosixPath(claim_folder).name
        number = name.removeprefix(CLAIM_PREFIX)
        if not (name.startswith(CLAIM_PREFIX) and number.isdigit() and int(number) < claim):
            continue
        for folder in _folders(filesystem, claim_folder):
            if PurePosixPath(folder).name.startswith(FOLDER_PREFIX) and folder not in kept:
                filesystem.delete_dir(folder)


def _folders(filesystem: pyarrow.fs.FileSystem, path: str) -> list[str]:
    selector = pyarrow.fs.FileSelector(path, allow_not_found=True)
    infos = filesystem.get_file_info(selector)
    return [info.path for info in infos if info.type == pyarrow.fs.FileType.Directory]
