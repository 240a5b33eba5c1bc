"""Feeding a :class:`RotatingCredential` from the parent's pipe (stdin), at the edge.

The pipe (a file descriptor) is read on a thread, so a blocking read never stalls the event
loop; each line is handed to the loop, which checks it. :func:`feed` returns once the first
credential is in, and leaves a task that keeps reading: it ends (with ``None``) when the
parent closes the pipe and raises :class:`CredentialFrameError` for a frame that must end the
executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading

from codexexec.remote.auth.rotating import (
    INITIAL_TIMEOUT,
    INITIAL_WAIT_SECONDS,
    MAX_FRAME_BYTES,
    PIPE_CLOSED,
    READ_FAILED,
    TOO_LARGE,
    CredentialFrameError,
    RotatingCredential,
)

log = logging.getLogger(__name__)

# A line, the end of the pipe (None), or Codex's text for a pipe that failed.
_Item = bytes | None | CredentialFrameError


async def feed(
    credential: RotatingCredential,
    fd: int,
    initial_wait: float = INITIAL_WAIT_SECONDS,
) -> asyncio.Task[None]:
    """Wait for the first frame (at most ``initial_wait`` seconds), then keep the credential
    current in the returned task."""
    loop = asyncio.get_running_loop()
    # Bounded by the reader: it waits for each line to be taken before reading the next.
    items: asyncio.Queue[_Item] = asyncio.Queue()
    taken = threading.Semaphore(0)

    def put(item: _Item) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            loop.call_soon_threadsafe(items.put_nowait, item)

    def read() -> None:
        # Raw reads of the descriptor: a thread blocked inside a buffered reader holds its
        # lock, and the interpreter aborts when it exits around one.
        pending = b""
        while True:
            newline = pending.find(b"\n")
            if 0 <= newline < MAX_FRAME_BYTES:
                line, pending = pending[: newline + 1], pending[newline + 1 :]
                put(line)
                taken.acquire()
                continue
            if newline >= MAX_FRAME_BYTES or len(pending) >= MAX_FRAME_BYTES:
                put(CredentialFrameError(TOO_LARGE))
                return
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                put(CredentialFrameError(READ_FAILED))
                return
            if not chunk:  # end of file, perhaps mid-frame
                put(None)
                return
            pending += chunk

    threading.Thread(target=read, name="executor-credential-pipe", daemon=True).start()

    async def take() -> bool:
        """One item applied: False once the pipe has ended."""
        item = await items.get()
        taken.release()
        if isinstance(item, CredentialFrameError):
            raise item
        if item is None:
            if not credential.ready:
                raise CredentialFrameError(PIPE_CLOSED)
            return False
        credential.accept(item)
        return True

    try:
        await asyncio.wait_for(take(), initial_wait)
    except TimeoutError:
        raise CredentialFrameError(INITIAL_TIMEOUT) from None

    async def keep_current() -> None:
        while await take():
            log.info("executor credential rotated (%d so far)", credential.rotations)

    return asyncio.create_task(keep_current(), name="executor-credential-feed")
