"""Websocket transport: one JSON-RPC message per text frame; connecting to a server.

The listening side is ``ws_listen.py``, which a client never loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from codexexec.protocol.limits import (
    MAX_MESSAGE_BYTES,
    WEBSOCKET_PING_INTERVAL_SECONDS,
    WEBSOCKET_PING_TIMEOUT_SECONDS,
)
from codexexec.shown_urls import without_secrets
from codexexec.transport.base import TransportClosed
from codexexec.transport.errors import TransportError

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection


# Both ends (ws_listen.py too): whole messages up to the protocol limit, no compression
# (payloads are mostly base64, and compression would cost more CPU than it saves on
# loopback).
CONNECTION_OPTIONS: dict[str, Any] = {
    "max_size": MAX_MESSAGE_BYTES,
    "max_queue": 16,
    "compression": None,
    "ping_interval": WEBSOCKET_PING_INTERVAL_SECONDS,
    "ping_timeout": WEBSOCKET_PING_TIMEOUT_SECONDS,
}


class WebSocketTransport:
    def __init__(self, connection: ClientConnection | ServerConnection, peer: str) -> None:
        self._ws = connection
        self._peer = peer

    @property
    def peer(self) -> str:
        return self._peer

    async def receive(self) -> bytes | str | None:
        try:
            return await self._ws.recv(decode=False)
        except ConnectionClosed:
            return None

    async def send(self, message: bytes) -> None:
        try:
            await self._ws.send(message, text=True)
        except ConnectionClosed as exc:
            raise TransportClosed(f"websocket to {self._peer} closed") from exc

    async def close(self) -> None:
        await self._ws.close()


class ConnectError(TransportError, ConnectionError):
    """The server could not be reached or refused the connection; the text says why."""


async def connect_websocket(
    url: str, *, token: str | None = None, open_timeout: float = 10.0
) -> WebSocketTransport:
    headers: dict[str, str] | Headers | Any = (
        {"Authorization": f"Bearer {token}"} if token else None
    )
    shown = without_secrets(url)  # a user name, password or query may be a credential
    try:
        connection = await connect(
            url,
            additional_headers=headers,
            open_timeout=open_timeout,
            user_agent_header=None,
            **CONNECTION_OPTIONS,
        )
    except InvalidURI:
        raise ConnectError(f"`{shown}` is not a websocket URL (expected ws://HOST:PORT)") from None
    except InvalidHandshake as exc:
        raise ConnectError(f"{shown} refused the websocket connection: {exc}") from None
    except TimeoutError:
        raise ConnectError(f"timed out connecting to {shown}") from None
    except OSError as exc:
        raise ConnectError(f"cannot connect to {shown}: {exc.strerror or exc}") from None
    return WebSocketTransport(connection, shown)
