"""A spinner on stderr for waits a person would notice; fast paths never draw it.

Nothing is drawn until the wait has lasted 300 ms, nothing at all when stderr is not
a terminal, and the line is wiped when the wait ends, so the output that follows (the
command's own) starts clean.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from typing import TextIO

SHOW_AFTER_SECONDS = 0.3
FRAME_SECONDS = 0.08
FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


@contextlib.asynccontextmanager
async def spinner(message: str, stream: TextIO | None = None) -> AsyncIterator[None]:
    out = stream if stream is not None else sys.stderr
    if not out.isatty():
        yield
        return
    drawn: list[bool] = []
    task = asyncio.create_task(_spin(message, out, drawn))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if drawn:
            out.write("\r\x1b[2K")
            out.flush()


async def _spin(message: str, out: TextIO, drawn: list[bool]) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.sleep(SHOW_AFTER_SECONDS)
    drawn.append(True)
    frame = 0
    while True:
        elapsed = loop.time() - started
        out.write(f"\r{FRAMES[frame % len(FRAMES)]} {message} {elapsed:.1f}s")
        out.flush()
        frame += 1
        await asyncio.sleep(FRAME_SECONDS)
