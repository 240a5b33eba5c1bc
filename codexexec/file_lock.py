"""An exclusive ``flock`` taken within a deadline, for sync and async callers alike."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator


def lock_attempts(fd: int, timeout: float) -> Iterator[None]:
    """Try to lock ``fd`` until it is held (the iteration ends) or ``timeout`` seconds have
    passed (TimeoutError). Between attempts the caller waits as suits it::

        for _ in lock_attempts(fd, 10):
            await asyncio.sleep(0.05)
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TimeoutError from None
            yield
