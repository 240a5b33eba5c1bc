"""Talking to the CLI through a real pseudo-terminal, as a person at a keyboard does."""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Callable


def converse(
    process: subprocess.Popen[bytes],
    master: int,
    react: Callable[[bytes], bool],
    timeout: float,
) -> bytes:
    """What ``process`` writes to the terminal until it ends (or ``timeout``); ``react`` sees
    the screen after each read, and once it returns True it is not called again."""
    screen = b""
    done = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.05)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            screen += data
        if not done:
            done = react(screen)
        if process.poll() is not None and not ready:
            break
    return screen
