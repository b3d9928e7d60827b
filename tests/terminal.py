"""Reading what a command shows on a pseudo-terminal, as a user's shell would see it."""

from __future__ import annotations

import os


def read_until_closed(leader: int, prompt: bytes = b"", reply: bytes = b"") -> bytes:
    """All the process writes to the terminal whose leader end is `leader`, until it closes
    it; once `prompt` has been shown, `reply` is typed (once). Closes `leader`."""
    shown = b""
    replied = not prompt
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        shown += chunk
        if not replied and prompt in shown:
            os.write(leader, reply)
            replied = True
    os.close(leader)
    return shown
