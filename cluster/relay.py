"""A mailbox actor that carries a run's progress from Ray Train workers to the dispatcher.

Workers (and Tune callbacks) `put` small messages without waiting; the dispatcher `drain`s them
and writes them to the job store. Workers never talk to Redis, so Ray nodes need no Redis
credentials and a slow Redis never stalls a training step.
"""

from __future__ import annotations

from typing import Any

import ray

Message = tuple[str, dict[str, Any]]  # (kind, payload): metrics, image, log, info, worker, ...


@ray.remote(num_cpus=0)
class Relay:
    def __init__(self) -> None:
        self._messages: list[Message] = []

    def put(self, kind: str, payload: dict[str, Any]) -> None:
        self._messages.append((kind, payload))

    def drain(self) -> list[Message]:
        messages, self._messages = self._messages, []
        return messages
