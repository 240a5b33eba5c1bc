"""Tasks started in the background and kept referenced until they end (the event loop holds
only weak references to tasks: one nobody keeps can vanish mid-flight)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any


class TaskSet:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(list(self._tasks))

    async def wait(self) -> None:
        """Until every task has ended (their exceptions are theirs: not raised here)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
