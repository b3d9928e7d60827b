"""A mailbox actor that carries a run's messages (jobs/messages.py) home to the dispatcher.

Workers (and Tune callbacks) `put` messages without waiting; the dispatcher `drain`s them and
stores them with `JobStore.write_for_run`. Workers never talk to Redis, so Ray nodes need no
Redis credentials and a slow Redis never stalls a training step.

While Redis refuses writes (full, or out of reach) the messages wait here, bounded by
RELAY_BYTES_KEPT over image grids and log lines, the two kinds a run sends without limit.
Past it, room is made down to REFILLED_TO of the bound (so that a full mailbox rebuilds its
queue once per tenth of the bound, not on every put): first older grids, each replaced by a
newer one of the same name; then the oldest log lines; then the newest grids. The next drain
starts with a line that says how many went. Everything else (a metrics row per epoch,
checkpoints, trial updates, what the dispatcher needs to stop the run) is small, bounded by the
run's epochs and trials, and always kept.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import ray

from jobs.messages import Image, Log, Message, message_bytes

RELAY_BYTES_KEPT = 256 * 2**20
REFILLED_TO = 0.9
DROPPABLE = (Image, Log)


class Mailbox:
    def __init__(self, bytes_kept: int = RELAY_BYTES_KEPT) -> None:
        self._messages: deque[Message] = deque()
        self._bytes = 0  # of the images and log lines waiting
        self._bytes_kept = bytes_kept
        self._dropped = dict.fromkeys(DROPPABLE, 0)  # not yet told

    def put(self, message: Message) -> None:
        self._messages.append(message)
        if isinstance(message, DROPPABLE):
            self._bytes += message_bytes(message)
            if self._bytes > self._bytes_kept:
                self._make_room()

    def _make_room(self) -> None:
        latest = {(m.trial, m.name): m for m in self._messages if isinstance(m, Image)}
        passes: tuple[Callable[[Message], bool], ...] = (
            lambda m: isinstance(m, Image) and latest[(m.trial, m.name)] is not m,
            lambda m: isinstance(m, Log),
            lambda m: isinstance(m, Image),
        )
        target = int(self._bytes_kept * REFILLED_TO)
        for droppable in passes:
            if self._bytes <= target:
                return
            self._drop_oldest(droppable, target)

    def _drop_oldest(self, droppable: Callable[[Message], bool], target: int) -> None:
        kept: deque[Message] = deque()
        for message in self._messages:
            if self._bytes > target and droppable(message):
                self._bytes -= message_bytes(message)
                self._dropped[type(message)] += 1
            else:
                kept.append(message)
        self._messages = kept

    def drain(self, limit: int) -> list[Message]:
        """The oldest `limit` messages, in the order they were put."""
        drained: list[Message] = []
        if any(self._dropped.values()):
            drained.append(Log(self._dropped_line()))
            self._dropped = dict.fromkeys(DROPPABLE, 0)
        while self._messages and len(drained) < limit:
            message = self._messages.popleft()
            if isinstance(message, DROPPABLE):
                self._bytes -= message_bytes(message)
            drained.append(message)
        return drained

    def _dropped_line(self) -> str:
        return (
            f"the relay dropped {self._dropped[Image]} image grids and {self._dropped[Log]} "
            f"log lines, the oldest, while they could not be stored (over "
            f"{self._bytes_kept // 2**20} MiB waited)"
        )


Relay = ray.remote(num_cpus=0)(Mailbox)
