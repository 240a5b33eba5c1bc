"""An in-process transport pair: the embedded `local` environment uses it."""

from __future__ import annotations

import asyncio
from collections import deque

from codexexec.protocol.limits import CONNECTION_QUEUE_CAPACITY
from codexexec.transport.base import TransportClosed


class _Channel:
    """One direction: bounded, and messages queued before close are still delivered."""

    def __init__(self) -> None:
        self._items: deque[bytes] = deque()
        self._closed = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    async def put(self, message: bytes) -> None:
        while len(self._items) >= CONNECTION_QUEUE_CAPACITY and not self._closed:
            self._writable.clear()
            await self._writable.wait()
        if self._closed:
            raise TransportClosed("in-process connection is closed")
        self._items.append(message)
        self._readable.set()

    async def get(self) -> bytes | None:
        while not self._items:
            if self._closed:
                return None
            self._readable.clear()
            await self._readable.wait()
        self._writable.set()
        return self._items.popleft()

    def close(self) -> None:
        self._closed = True
        self._readable.set()
        self._writable.set()


class MemoryTransport:
    def __init__(self, inbox: _Channel, outbox: _Channel, peer: str) -> None:
        self._inbox = inbox
        self._outbox = outbox
        self._peer = peer

    @property
    def peer(self) -> str:
        return self._peer

    async def receive(self) -> bytes | None:
        return await self._inbox.get()

    async def send(self, message: bytes) -> None:
        await self._outbox.put(message)

    async def close(self) -> None:
        self._outbox.close()
        self._inbox.close()


def memory_pair() -> tuple[MemoryTransport, MemoryTransport]:
    """Two connected ends: (client side, server side)."""
    to_server, to_client = _Channel(), _Channel()
    return (
        MemoryTransport(to_client, to_server, "in-process server"),
        MemoryTransport(to_server, to_client, "in-process client"),
    )
