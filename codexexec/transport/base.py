"""The one interface every transport implements (websocket, stdio, in-memory, relay)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from codexexec.transport.errors import TransportError

if TYPE_CHECKING:
    from codexexec.protocol.output_notification import OutputMessage


class TransportClosed(TransportError, ConnectionError):
    """The peer is gone; nothing more can be sent or received."""


class MessageTransport(Protocol):
    """A bidirectional stream of whole messages."""

    @property
    def peer(self) -> str:
        """A short description of the other end, for logs (never a secret)."""
        ...

    async def receive(self) -> bytes | str | OutputMessage | None:
        """The next message, or None once the peer closed the stream (an in-process peer's
        output arrives as the OutputMessage it was)."""
        ...

    async def send(self, message: bytes) -> None:
        """Send one UTF-8 JSON message; raises TransportClosed when the peer is gone."""
        ...

    async def close(self) -> None:
        """Close the stream; idempotent."""
        ...
