"""A bounded FIFO of messages between two tasks: the rendezvous's per-socket outboxes and
the in-process transport's two directions."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sized
from typing import Generic, TypeVar

T = TypeVar("T", bound=Sized)


class BoundedQueue(Generic[T]):
    """A FIFO of messages bounded by count and bytes.

    One oversized item is always admitted into an empty queue, so a single message can
    never wedge it.
    """

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self._items: deque[T] = deque()
        self._bytes = 0
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self._closed = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._items)

    def has_room(self, size: int) -> bool:
        if not self._items:
            return True
        return len(self._items) < self._max_frames and self._bytes + size <= self._max_bytes

    def _append(self, data: T) -> None:
        self._items.append(data)
        self._bytes += len(data)
        self._readable.set()

    def try_put(self, data: T) -> bool:
        if self._closed or not self.has_room(len(data)):
            return False
        self._append(data)
        return True

    async def put(self, data: T) -> bool:
        """Wait for room; False if the queue was closed first."""
        while not self._closed and not self.has_room(len(data)):
            self._writable.clear()
            await self._writable.wait()
        if self._closed:
            return False
        self._append(data)
        return True

    async def get(self) -> T | None:
        """The next item, or None once closed and drained."""
        while not self._items:
            if self._closed:
                return None
            self._readable.clear()
            await self._readable.wait()
        data = self._items.popleft()
        self._bytes -= len(data)
        self._writable.set()
        return data

    def close(self, *, drain: bool) -> None:
        """Refuse new items; with ``drain`` the queued ones are still delivered."""
        self._closed = True
        if not drain:
            self._items.clear()
            self._bytes = 0
        self._readable.set()
        self._writable.set()
