"""An in-process transport pair: the embedded `local` environment uses it."""

from __future__ import annotations

from codexexec.bounded_queue import BoundedQueue
from codexexec.protocol.limits import CONNECTION_QUEUE_CAPACITY
from codexexec.protocol.output_notification import OutputMessage
from codexexec.transport.base import TransportClosed

# Counted in messages; their bytes are the server's and the client's own flow control.
_NO_BYTE_LIMIT = 1 << 62


Message = bytes | OutputMessage


def _channel() -> BoundedQueue[Message]:
    return BoundedQueue(CONNECTION_QUEUE_CAPACITY, _NO_BYTE_LIMIT)


class MemoryTransport:
    def __init__(
        self, inbox: BoundedQueue[Message], outbox: BoundedQueue[Message], peer: str
    ) -> None:
        self._inbox = inbox
        self._outbox = outbox
        self._peer = peer

    @property
    def peer(self) -> str:
        return self._peer

    async def receive(self) -> Message | None:
        return await self._inbox.get()

    async def send(self, message: bytes) -> None:
        await self.send_output(message)

    async def send_output(self, message: Message) -> None:
        """Also an OutputMessage, as it is: both ends are this process."""
        if not await self._outbox.put(message):
            raise TransportClosed("in-process connection is closed")

    async def close(self) -> None:
        # What was sent before the close is still delivered.
        self._outbox.close(drain=True)
        self._inbox.close(drain=True)


def memory_pair() -> tuple[MemoryTransport, MemoryTransport]:
    """Two connected ends: (client side, server side)."""
    to_server, to_client = _channel(), _channel()
    return (
        MemoryTransport(to_client, to_server, "in-process server"),
        MemoryTransport(to_server, to_client, "in-process client"),
    )
