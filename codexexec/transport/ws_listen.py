"""Listening for websocket connections (the exec-server's side).

The listener also answers ``GET /readyz`` on the same port, and gates upgrades as the
``ws_auth.py`` policy it is given says (Codex's ``--ws-auth`` modes, or the
``CODEX_EXEC_SERVER_CONNECTION_TOKEN`` bearer); ``GET /metrics`` is answered behind the
same gate when the server keeps metrics.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from codexexec.transport.errors import TransportError
from codexexec.transport.websocket import CONNECTION_OPTIONS, WebSocketTransport
from codexexec.transport.ws_auth import Policy, authorize

CONNECTION_TOKEN_ENV = "CODEX_EXEC_SERVER_CONNECTION_TOKEN"


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
        **CONNECTION_OPTIONS,
    )


def bound_url(server: Server) -> str:
    for sock in server.sockets:
        host, port = sock.getsockname()[:2]
        if ":" in host:
            host = f"[{host}]"
        return f"ws://{host}:{port}"
    raise RuntimeError("websocket server has no listening socket")
