"""Newline-delimited JSON over a Unix socket: a stdio environment's keeper and its clients.

The framing is the stdio transport's (one JSON message per line, the same size limit),
so the keeper relays lines between its clients and the program it holds unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from codexexec.protocol.limits import MAX_MESSAGE_BYTES
from codexexec.transport.stdio import StreamTransport


async def connect_unix_transport(path: str, peer: str) -> StreamTransport:
    """Connect to the socket at ``path``; raises OSError when nothing listens there."""
    reader, writer = await asyncio.open_unix_connection(path, limit=MAX_MESSAGE_BYTES)
    return StreamTransport(reader, writer, peer)


async def serve_unix(
    path: str, on_connection: Callable[[StreamTransport], Awaitable[None]], peer: str
) -> asyncio.Server:
    """Listen at ``path`` (which must not exist) and hand each connection to ``on_connection``."""

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await on_connection(StreamTransport(reader, writer, peer))

    return await asyncio.start_unix_server(accepted, path=path, limit=MAX_MESSAGE_BYTES)
