"""Running an ExecServer on a listen URL until it is told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable

from codexexec.server.app import ExecServer
from codexexec.transport.websocket import WebSocketTransport
from codexexec.transport.ws_auth import Policy, capability_token
from codexexec.transport.ws_listen import (
    CONNECTION_TOKEN_ENV,
    bound_url,
    listen,
    parse_ws_listen_url,
)

log = logging.getLogger(__name__)

STDIO_URLS = ("stdio", "stdio://")
WEBSOCKET_MALFORMED_PREFIX = "failed to parse websocket JSON-RPC message from exec-server websocket"
STDIO_MALFORMED_PREFIX = "failed to parse JSON-RPC message from exec-server stdio"


def validate_listen_url(url: str) -> None:
    """Raise ListenUrlError for a URL the server cannot listen on."""
    if url not in STDIO_URLS:
        parse_ws_listen_url(url)


async def run_server(
    server: ExecServer,
    listen_url: str,
    *,
    on_ready: Callable[[str], None],
    auth: Policy | None = None,
    metrics_listen: str | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM. ``auth`` gates websocket upgrades; without it, a
    ``CODEX_EXEC_SERVER_CONNECTION_TOKEN`` in the environment does (as a capability token)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with contextlib.AsyncExitStack() as stack:
            if metrics_listen is not None and server.metrics is not None:
                await stack.enter_async_context(
                    serving_metrics(metrics_listen, server.metrics.render, auth)
                )
            if listen_url in STDIO_URLS:
                await _serve_stdio(server, stop, on_ready)
            else:
                await _serve_websocket(server, listen_url, stop, on_ready, auth)
    finally:
        await server.aclose()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _serve_websocket(
    server: ExecServer,
    listen_url: str,
    stop: asyncio.Event,
    on_ready: Callable[[str], None],
    auth: Policy | None,
) -> None:
    address = parse_ws_listen_url(listen_url)
    token = os.environ.get(CONNECTION_TOKEN_ENV) or None
    if auth is None and token is not None:
        auth = capability_token(token)

    async def on_connection(transport: WebSocketTransport) -> None:
        log.debug("connection from %s", transport.peer)
        # Codex names the peer in the error, e.g. "… exec-server websocket 127.0.0.1:53756".
        await server.serve(
            transport, malformed_prefix=f"{WEBSOCKET_MALFORMED_PREFIX} {transport.peer}"
        )

    metrics = server.metrics.render if server.metrics is not None else None
    ws_server = await listen(address, on_connection, policy=auth, metrics=metrics)
    on_ready(bound_url(ws_server))
    try:
        await stop.wait()
    finally:
        ws_server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws_server.wait_closed(), 5.0)


async def _serve_stdio(
    server: ExecServer, stop: asyncio.Event, on_ready: Callable[[str], None]
) -> None:
    from codexexec.transport.stdio import stdio_server_transport

    transport = await stdio_server_transport()
    on_ready("stdio")
    serving = asyncio.create_task(server.serve(transport, malformed_prefix=STDIO_MALFORMED_PREFIX))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    for task in (serving, stopping):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def serving_metrics(
    url: str, render: Callable[[], bytes], auth: Policy | None
) -> AsyncIterator[None]:
    """`--metrics-listen`: say where, on stderr (stdout belongs to the protocol or the URL)."""
    from codexexec.server.metrics_http import metrics_listener

    async with metrics_listener(url, render, auth) as bound:
        sys.stderr.write(f"codexexec: metrics on {bound}/metrics\n")
        sys.stderr.flush()
        yield
