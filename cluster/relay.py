"""A mailbox actor that carries a run's messages (jobs/messages.py) home to the dispatcher.

Workers (and Tune callbacks) `put` messages without waiting; the dispatcher `drain`s them and
stores them with `JobStore.write_for_run`. Workers never talk to Redis, so Ray nodes need no
Redis credentials and a slow Redis never stalls a training step.
"""

from __future__ import annotations

from collections import deque

import ray

from jobs.messages import Message


@ray.remote(num_cpus=0)
class Relay:
    def __init__(self) -> None:
        self._messages: deque[Message] = deque()

    def put(self, message: Message) -> None:
        self._messages.append(message)

    def drain(self, limit: int) -> list[Message]:
        """The oldest `limit` messages, in the order they were put."""
        count = min(limit, len(self._messages))
        return [self._messages.popleft() for _ in range(count)]
