"""Failures that a retry would repeat.

A run that raises one of these fails its job at once: the spec, the data or the checkpoint is
wrong, or the loss diverged, and every attempt left would meet the same error. Retryability
is carried by the error's type, never read back from its message.
"""


class NotRetryable(Exception):
    """Base of every error a retry of the same job would raise again."""
