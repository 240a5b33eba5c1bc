"""Forwarding one relay stream to its own websocket connection to a local exec-server."""

from __future__ import annotations

import asyncio
import contextlib

from codexexec.transport.base import MessageTransport, TransportClosed
from codexexec.transport.websocket import ConnectError, connect_websocket


async def _pipe(source: MessageTransport, target: MessageTransport) -> None:
    with contextlib.suppress(TransportClosed, ConnectionError):
        while (message := await source.receive()) is not None:
            await target.send(message if isinstance(message, bytes) else message.encode())


async def forward_stream(stream: MessageTransport, url: str) -> None:
    """Carry messages both ways until either side ends; then end the other."""
    try:
        backend = await connect_websocket(url)
    except ConnectError:
        await stream.close()
        return
    tasks = [
        asyncio.create_task(_pipe(stream, backend)),
        asyncio.create_task(_pipe(backend, stream)),
    ]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()
    await backend.close()
    await stream.close()
