"""The ordered outgoing queue of one connection, with byte-based flow control.

Everything a connection sends goes through here in order, so a response is never
overtaken by a notification queued after it. Producers that cannot wait (process
output callbacks) ``post`` and then pause themselves while ``congested()``; they are
resumed by ``when_drained``. Producers that can wait ``await put``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable

from codexexec.bounded_queue import BoundedQueue
from codexexec.protocol.output_notification import OutputMessage
from codexexec.transport.base import MessageTransport, TransportClosed

log = logging.getLogger(__name__)

# Above this many queued bytes, producers hold back until the peer catches up...
HIGH_WATER_BYTES = 4 * 1024 * 1024
# ...to this many.
LOW_WATER_BYTES = 1024 * 1024
# A batch for a transport that sends several messages at once stops taking more here: one
# relay record's worth, or 64 messages (a record is delivered to its reader all at once).
BATCH_BYTES = 60 * 1024
BATCH_MESSAGES = 64


class Outbox:
    def __init__(self, transport: MessageTransport) -> None:
        self._transport = transport
        # Every producer pushes (bytes bound the queue: each holds back past the high-water
        # mark), so the count bound never applies.
        self._queue: BoundedQueue[bytes | OutputMessage] = BoundedQueue(
            sys.maxsize, HIGH_WATER_BYTES, resume_bytes=LOW_WATER_BYTES
        )
        # An in-process peer takes output as it is (``send_output``); others get bytes.
        self._send_output = getattr(transport, "send_output", None)
        # A relay stream sends what is queued together in shared records: an exit and the
        # close after it then cost one relay frame, not two (docs/relay-protocol.md §3.2).
        self._send_batch: Callable[[list[bytes]], Awaitable[None]] | None = getattr(
            transport, "send_batch", None
        )
        # Set while nothing posted is still waiting to reach the transport.
        self._empty = asyncio.Event()
        self._empty.set()
        self._writer = asyncio.create_task(self._write_loop())

    @property
    def closed(self) -> bool:
        return self._queue.closed

    @property
    def queued_bytes(self) -> int:
        return self._queue.queued_bytes

    def congested(self) -> bool:
        return self._queue.held_back()

    def post(self, message: bytes | OutputMessage) -> None:
        if not self._queue.closed:
            self._empty.clear()
            self._queue.push(message)

    async def put(self, message: bytes) -> None:
        """Queue ``message`` once producers are not held back, whatever its size: a large
        reply must not wait for the queue to empty while output keeps coming."""
        while self._queue.held_back() and not self._queue.closed:
            await self._queue.wait_writable()
        if self._queue.closed:
            raise TransportClosed("connection closed")
        self._empty.clear()
        self._queue.push(message)

    def when_drained(self, callback: Callable[[], None]) -> None:
        self._queue.when_writable(callback)

    async def drained(self) -> None:
        """Until producers may go on (at once when not congested)."""
        await self._queue.wait_writable()

    async def _write_loop(self) -> None:
        try:
            while (message := await self._queue.get()) is not None:
                if self._send_batch is not None:
                    await self._send_batch(self._batch(message))
                elif not isinstance(message, OutputMessage):
                    await self._transport.send(message)
                elif self._send_output is not None:
                    await self._send_output(message)
                else:
                    await self._transport.send(message.encode())
                if not len(self._queue):
                    self._empty.set()
        except (TransportClosed, ConnectionError) as exc:
            log.debug("outbox to %s stopped: %s", self._transport.peer, exc)
        finally:
            self.close()

    def _batch(self, first: bytes | OutputMessage) -> list[bytes]:
        """``first`` and whatever else is queued already, up to about BATCH_BYTES and at most
        BATCH_MESSAGES."""
        batch = [_encoded(first)]
        size = len(batch[0])
        while (
            size < BATCH_BYTES
            and len(batch) < BATCH_MESSAGES
            and (more := self._queue.get_ready()) is not None
        ):
            batch.append(_encoded(more))
            size += len(batch[-1])
        return batch

    def close(self) -> None:
        """Stop sending; queued messages are dropped and waiting producers released."""
        if self._queue.closed:
            return
        self._queue.close(drain=False)
        self._empty.set()
        if asyncio.current_task() is not self._writer:
            self._writer.cancel()

    async def flush(self) -> None:
        """Wait until everything posted so far has been handed to the transport."""
        await self._empty.wait()


def _encoded(message: bytes | OutputMessage) -> bytes:
    return message.encode() if isinstance(message, OutputMessage) else message
