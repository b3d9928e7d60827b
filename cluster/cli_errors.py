"""Turn the errors users cause into one clear line and an exit code, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis
from rich.console import Console

from genfleet.errors import SpecFileError
from jobs.limits import LimitError
from jobs.records import IdempotencyConflict, InvalidTransition, JobNotFound
from jobs.redis_server import EmbeddedRedisError
from jobs.spec_errors import SpecError
from jobs.store import redis_full_text

# No markup: messages quote user input (file names, YAML keys), where "[/x]" is text, not a tag.
stderr = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)

EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A mistake in what the user asked for; the message says what would be valid."""

    exit_code = EXIT_INVALID


class UsageError(UserError):
    """The command cannot run as asked, e.g. the dashboard's port is taken."""

    exit_code = EXIT_USAGE


@dataclass
class Outcome:
    code: int = 0


@contextmanager
def friendly_errors() -> Iterator[Outcome]:
    outcome = Outcome()
    try:
        yield outcome
    except SpecError as exc:
        stderr.print("invalid spec", style="red")
        stderr.print(str(exc))
        outcome.code = EXIT_INVALID
    except JobNotFound as exc:
        stderr.print(f"error: {exc}")
        outcome.code = EXIT_USAGE
    except LimitError as exc:
        stderr.print(f"error: {exc}")
        outcome.code = EXIT_USAGE
    except SpecFileError as exc:
        stderr.print(f"error: {exc}")
        outcome.code = EXIT_INVALID
    except (InvalidTransition, IdempotencyConflict, UserError) as exc:
        stderr.print(f"error: {exc}")
        outcome.code = getattr(exc, "exit_code", EXIT_INVALID)
    except (redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError) as exc:
        stderr.print(f"error: cannot reach Redis ({exc}); check GENFLEET_REDIS_URL")
        outcome.code = EXIT_UNAVAILABLE
    except redis.exceptions.OutOfMemoryError:
        stderr.print(f"error: {redis_full_text(None)}", markup=False)
        outcome.code = EXIT_UNAVAILABLE
    except EmbeddedRedisError as exc:
        stderr.print(f"error: cannot start the embedded Redis: {exc}")
        outcome.code = EXIT_UNAVAILABLE
    except OSError as exc:  # the runs' storage (GENFLEET_STORAGE): unreachable, no credentials
        stderr.print(f"error: {exc}", markup=False)
        outcome.code = EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        stderr.print("interrupted")
        outcome.code = EXIT_INTERRUPTED
    sys.stdout.flush()
