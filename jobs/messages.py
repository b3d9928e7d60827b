"""What a run sends home while it trains: one dataclass per kind of message.

A run's Train workers and its sweep's Tune callbacks put these into the run's relay actor
(cluster/relay.py); the dispatcher drains the relay and stores them with
`JobStore.write_for_run`, behind the run's lease, so a copy of the run that lost its lease
writes nothing. `trial` is the sweep trial a message is about, None for the job itself.
`group` is the placement group of the Train workers that sent it (None from elsewhere): a
worker cut off with its node keeps what it had not sent and Ray delivers it when the network
heals, after Ray Train restarted the run elsewhere; the dispatcher drops what a replaced group
sends.

Three kinds only tell the dispatcher how to stop the run for good and are never stored:
`Worker` (where each rank runs), `PlacementGroup` and `Controller`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Metrics:
    """One epoch's row: epoch, step, train_bits_per_dim, val_bits_per_dim, ..."""

    metrics: dict[str, Any]
    trial: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class Image:
    """A PNG grid: samples, reconstructions, completions, interpolations."""

    name: str
    epoch: int
    png: bytes
    trial: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class Log:
    line: str
    trial: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class Checkpoint:
    """The epoch whose checkpoint Ray Train persisted under `path`, the run's folder."""

    epoch: int
    path: str
    trial: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class TrialUpdate:
    """A sweep trial's config, status, metric values, stop reason and iterations."""

    trial: str
    info: dict[str, Any]


@dataclass(frozen=True)
class RunInfo:
    """Facts about the run worth an event in the job's history (device, parameters, ...)."""

    info: dict[str, Any]
    trial: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class Fatal:
    """The run stopped itself (a diverged loss, a tracker package missing): the job fails
    without a retry."""

    error: str
    trial: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class Unrecoverable:
    """A run or trial is failing with an error a retry would raise again (jobs/failures.py: a
    dataset or checkpoint that cannot be used, a refused trial value). Ray Train may still
    restart the run; only if the job then fails does it fail without a retry."""

    error: str
    trial: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class Worker:
    """A Train worker started: its rank, process and node, and the group it runs in."""

    rank: int
    pid: int
    node_id: str
    placement_group: str | None
    trial: str | None = None
    started_at: float = 0.0  # wall clock: the newest group of a trial is the one started last
    # A run trained directly by one process (cluster/warm_runner.py, or a sweep's trial actor)
    # has no placement group; its actor's id names its group instead.
    actor: str | None = None

    @property
    def group(self) -> str | None:
        """What every other message of these workers names as their `group`."""
        return self.placement_group or self.actor


@dataclass(frozen=True)
class PlacementGroup:
    """A reservation the run made (Tune's per-trial one), which a stop must free."""

    placement_group: str | None
    trial: str | None = None


@dataclass(frozen=True)
class Controller:
    """The run's Ray Train controller actor, which a stop aborts."""

    controller: Any
    trial: str | None = None


Message = (
    Metrics
    | Image
    | Log
    | Checkpoint
    | TrialUpdate
    | RunInfo
    | Fatal
    | Unrecoverable
    | Worker
    | PlacementGroup
    | Controller
)


MESSAGE_OVERHEAD_BYTES = 256  # what holding or storing any message costs beside its payload


def message_bytes(message: Message) -> int:
    """About what holding or storing the message costs, to bound the bytes written per tick
    and the bytes a relay keeps."""
    if isinstance(message, Image):
        return len(message.png) + MESSAGE_OVERHEAD_BYTES
    if isinstance(message, Log):
        return len(message.line.encode()) + MESSAGE_OVERHEAD_BYTES
    return MESSAGE_OVERHEAD_BYTES
