"""A mailbox actor that carries a run's messages (jobs/messages.py) home to the dispatcher.

Workers (and Tune callbacks) `put` messages without waiting; the dispatcher `drain`s them and
stores them with `JobStore.write_for_run`. Workers never talk to Redis, so Ray nodes need no
Redis credentials and a slow Redis never stalls a training step.

While Redis refuses writes (full, or out of reach) the messages wait here, bounded by
RELAY_IMAGE_BYTES_KEPT: past it the oldest image grids go first, since every later epoch draws
a newer one, and a log line says how many went. Everything else (metrics rows, checkpoints,
trial updates, what the dispatcher needs to stop the run) is small and always kept.
"""

from __future__ import annotations

from collections import deque

import ray

from jobs.messages import Image, Log, Message

RELAY_IMAGE_BYTES_KEPT = 256 * 2**20


class Mailbox:
    def __init__(self, image_bytes_kept: int = RELAY_IMAGE_BYTES_KEPT) -> None:
        self._messages: deque[Message] = deque()
        self._image_bytes = 0
        self._image_bytes_kept = image_bytes_kept
        self._dropped_images = 0  # not yet told

    def put(self, message: Message) -> None:
        self._messages.append(message)
        if isinstance(message, Image):
            self._image_bytes += len(message.png)
            if self._image_bytes > self._image_bytes_kept:
                self._drop_oldest_images()

    def _drop_oldest_images(self) -> None:
        kept: deque[Message] = deque()
        for message in self._messages:
            over = self._image_bytes > self._image_bytes_kept
            if over and isinstance(message, Image):
                self._image_bytes -= len(message.png)
                self._dropped_images += 1
            else:
                kept.append(message)
        self._messages = kept

    def drain(self, limit: int) -> list[Message]:
        """The oldest `limit` messages, in the order they were put."""
        drained: list[Message] = []
        if self._dropped_images:
            line = (
                f"the relay dropped {self._dropped_images} image grids, the oldest, while "
                f"they could not be stored (over {self._image_bytes_kept // 2**20} MiB waited)"
            )
            drained.append(Log(line))
            self._dropped_images = 0
        while self._messages and len(drained) < limit:
            message = self._messages.popleft()
            if isinstance(message, Image):
                self._image_bytes -= len(message.png)
            drained.append(message)
        return drained


Relay = ray.remote(num_cpus=0)(Mailbox)
