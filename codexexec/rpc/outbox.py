"""The ordered outgoing queue of one connection, with byte-based flow control.

Everything a connection sends goes through here in order, so a response is never
overtaken by a notification queued after it. Producers that cannot wait (process
output callbacks) ``post`` and then pause themselves while ``congested()``; they are
resumed by ``when_drained``. Producers that can wait ``await put``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from codexexec.protocol.output_notification import OutputMessage
from codexexec.transport.base import MessageTransport, TransportClosed

log = logging.getLogger(__name__)

# Above this many queued bytes, producers hold back until the peer catches up.
HIGH_WATER_BYTES = 4 * 1024 * 1024
LOW_WATER_BYTES = 1024 * 1024


class Outbox:
    def __init__(self, transport: MessageTransport) -> None:
        self._transport = transport
        self._queue: deque[bytes | OutputMessage] = deque()
        # An in-process peer takes output as it is (``send_output``); others get bytes.
        self._send_output = getattr(transport, "send_output", None)
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._empty = asyncio.Event()
        self._empty.set()
        self._drain_callbacks: list[Callable[[], None]] = []
        self.closed = False
        self._writer = asyncio.create_task(self._write_loop())

    def congested(self) -> bool:
        return self._queued_bytes > HIGH_WATER_BYTES

    def post(self, message: bytes | OutputMessage) -> None:
        if self.closed:
            return
        self._queue.append(message)
        self._queued_bytes += len(message)
        self._empty.clear()
        if self._queued_bytes > HIGH_WATER_BYTES:
            self._drained.clear()
        self._wake.set()

    async def put(self, message: bytes) -> None:
        while self.congested() and not self.closed:
            await self._drained.wait()
        if self.closed:
            raise TransportClosed("connection closed")
        self.post(message)

    def when_drained(self, callback: Callable[[], None]) -> None:
        if self.closed or not self.congested():
            callback()
        else:
            self._drain_callbacks.append(callback)

    async def _write_loop(self) -> None:
        try:
            while True:
                while not self._queue:
                    self._wake.clear()
                    await self._wake.wait()
                message = self._queue.popleft()
                if not isinstance(message, OutputMessage):
                    await self._transport.send(message)
                elif self._send_output is not None:
                    await self._send_output(message)
                else:
                    await self._transport.send(message.encode())
                self._queued_bytes -= len(message)
                if not self._queue:
                    self._empty.set()
                if self._queued_bytes <= LOW_WATER_BYTES and not self._drained.is_set():
                    self._release()
        except (TransportClosed, ConnectionError) as exc:
            log.debug("outbox to %s stopped: %s", self._transport.peer, exc)
        finally:
            self.close()

    def _release(self) -> None:
        self._drained.set()
        callbacks, self._drain_callbacks = self._drain_callbacks, []
        for callback in callbacks:
            callback()

    def close(self) -> None:
        """Stop sending; queued messages are dropped and waiting producers released."""
        if self.closed:
            return
        self.closed = True
        self._queue.clear()
        self._queued_bytes = 0
        self._empty.set()
        self._release()
        if asyncio.current_task() is not self._writer:
            self._writer.cancel()

    async def flush(self) -> None:
        """Wait until everything posted so far has been handed to the transport."""
        await self._empty.wait()
