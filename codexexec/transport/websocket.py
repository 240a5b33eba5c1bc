"""Websocket transport: one JSON-RPC message per text frame.

The listener also answers ``GET /readyz`` on the same port, and gates upgrades as the
``ws_auth.py`` policy it is given says (Codex's ``--ws-auth`` modes, or the
``CODEX_EXEC_SERVER_CONNECTION_TOKEN`` bearer); ``GET /metrics`` is answered behind the
same gate when the server keeps metrics.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.http11 import Request, Response

from codexexec.protocol.limits import (
    MAX_MESSAGE_BYTES,
    WEBSOCKET_PING_INTERVAL_SECONDS,
    WEBSOCKET_PING_TIMEOUT_SECONDS,
)
from codexexec.transport.base import TransportClosed
from codexexec.transport.errors import TransportError
from codexexec.transport.ws_auth import Policy, authorize

log = logging.getLogger(__name__)

CONNECTION_TOKEN_ENV = "CODEX_EXEC_SERVER_CONNECTION_TOKEN"


# Both ends: whole messages up to the protocol limit, no compression (payloads are
# mostly base64, and compression would cost more CPU than it saves on loopback).
_CONNECTION_OPTIONS: dict[str, Any] = {
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


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str
    port: int


class ListenUrlError(TransportError, ValueError):
    pass


def parse_ws_listen_url(url: str) -> ListenAddress:
    """``ws://IP:PORT`` with an IP literal, as Codex requires."""
    invalid = ListenUrlError(f"invalid websocket --listen URL `{url}`; expected `ws://IP:PORT`")
    if not url.startswith("ws://"):
        raise ListenUrlError(
            f"unsupported --listen URL `{url}`; expected `ws://IP:PORT` or `stdio`"
        )
    authority = url[len("ws://") :].rstrip("/")
    host, sep, port_text = authority.rpartition(":")
    if not sep or not port_text.isdigit():
        raise invalid
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise invalid from None
    port = int(port_text)
    if port > 65535:
        raise invalid
    return ListenAddress(host, port)


def _auth_gate(
    policy: Policy | None, metrics: Callable[[], bytes] | None
) -> Callable[[ServerConnection, Request], Awaitable[Response | None]]:
    async def process_request(connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/readyz":
            return connection.respond(HTTPStatus.OK, "")
        if policy is not None:
            refusal = authorize(policy, request.headers.get("Authorization"), time.time())
            if refusal is not None:
                return connection.respond(HTTPStatus.UNAUTHORIZED, refusal)
        if path == "/metrics" and metrics is not None:
            # Behind the same authentication as the websocket: activity is not public.
            return connection.respond(HTTPStatus.OK, metrics().decode())
        return None

    return process_request


async def listen(
    address: ListenAddress,
    on_connection: Callable[[WebSocketTransport], Awaitable[None]],
    *,
    policy: Policy | None,
    metrics: Callable[[], bytes] | None = None,
) -> Server:
    async def handle(connection: ServerConnection) -> None:
        host, port = connection.remote_address[:2]
        await on_connection(WebSocketTransport(connection, f"{host}:{port}"))

    return await serve(
        handle,
        address.host,
        address.port,
        process_request=_auth_gate(policy, metrics),
        server_header=None,
        **_CONNECTION_OPTIONS,
    )


def bound_url(server: Server) -> str:
    for sock in server.sockets:
        host, port = sock.getsockname()[:2]
        if ":" in host:
            host = f"[{host}]"
        return f"ws://{host}:{port}"
    raise RuntimeError("websocket server has no listening socket")


class ConnectError(TransportError, ConnectionError):
    """The server could not be reached or refused the connection; the text says why."""


async def connect_websocket(
    url: str, *, token: str | None = None, open_timeout: float = 10.0
) -> WebSocketTransport:
    headers: dict[str, str] | Headers | Any = (
        {"Authorization": f"Bearer {token}"} if token else None
    )
    try:
        connection = await connect(
            url,
            additional_headers=headers,
            open_timeout=open_timeout,
            user_agent_header=None,
            **_CONNECTION_OPTIONS,
        )
    except InvalidURI:
        raise ConnectError(f"`{url}` is not a websocket URL (expected ws://HOST:PORT)") from None
    except InvalidHandshake as exc:
        raise ConnectError(f"{url} refused the websocket connection: {exc}") from None
    except TimeoutError:
        raise ConnectError(f"timed out connecting to {url}") from None
    except OSError as exc:
        raise ConnectError(f"cannot connect to {url}: {exc.strerror or exc}") from None
    return WebSocketTransport(connection, url)
