"""The one bounded FIFO of messages between two tasks: a connection's outbox
(rpc/outbox.py), the rendezvous's per-socket outboxes and the in-process transport's two
directions."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sized
from typing import Generic, TypeVar

T = TypeVar("T", bound=Sized)


class BoundedQueue(Generic[T]):
    """A FIFO of messages bounded by count and bytes.

    Producers that can wait ``put`` (or ``try_put``, which never waits). Producers that
    cannot — a process's output callback — ``push``, which always queues, and hold
    themselves back while ``held_back()``; ``when_writable`` resumes them. Once held
    back, producers are let go again only when the bytes fall to ``resume_bytes``, so a
    paused producer is not woken for every message taken.

    One oversized item is always admitted into an empty queue, so a single message can
    never wedge it.
    """

    def __init__(self, max_items: int, max_bytes: int, *, resume_bytes: int | None = None) -> None:
        self._items: deque[T] = deque()
        self._bytes = 0
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._resume_bytes = max_bytes if resume_bytes is None else resume_bytes
        self._closed = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._on_writable: list[Callable[[], None]] = []

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def has_room(self, size: int) -> bool:
        if not self._items:
            return True
        return len(self._items) < self._max_items and self._bytes + size <= self._max_bytes

    def held_back(self) -> bool:
        """Producers that push must wait (``when_writable``) before pushing more."""
        return not self._writable.is_set()

    def _append(self, data: T) -> None:
        self._items.append(data)
        self._bytes += len(data)
        self._readable.set()

    def push(self, data: T) -> None:
        """Queue ``data`` whatever the bounds (dropped once closed)."""
        if self._closed:
            return
        self._append(data)
        if self._bytes > self._max_bytes:
            self._writable.clear()

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

    async def wait_writable(self) -> None:
        await self._writable.wait()

    def when_writable(self, callback: Callable[[], None]) -> None:
        if self._writable.is_set():
            callback()
        else:
            self._on_writable.append(callback)

    def _release(self) -> None:
        self._writable.set()
        callbacks, self._on_writable = self._on_writable, []
        for callback in callbacks:
            callback()

    async def get(self) -> T | None:
        """The next item, or None once closed and drained."""
        while not self._items:
            if self._closed:
                return None
            self._readable.clear()
            await self._readable.wait()
        return self._pop()

    def get_ready(self) -> T | None:
        """The next item if one is queued now, else None (never waits)."""
        return self._pop() if self._items else None

    def _pop(self) -> T:
        data = self._items.popleft()
        self._bytes -= len(data)
        if not self._writable.is_set() and self._bytes <= self._resume_bytes:
            self._release()
        return data

    def close(self, *, drain: bool) -> None:
        """Refuse new items; with ``drain`` the queued ones are still delivered. Waiting
        producers are let go."""
        self._closed = True
        if not drain:
            self._items.clear()
            self._bytes = 0
        self._readable.set()
        self._release()
